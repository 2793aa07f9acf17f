"""benchmarks/gpu_check.py, the one script a lent GPU runs (issue #13), kept working on the CPU.

``--device cpu --quick`` runs the same code with tiny sizes: every section must
write its table and numbers, and a run cut short must keep what it measured.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read(out: Path):
    return (out / "gpu_check.md").read_text(), json.loads((out / "gpu_check.json").read_text())


def test_the_quick_sections_on_the_cpu(gpu_check, tmp_path):
    out = tmp_path / "out"
    assert gpu_check.main(["--out", str(out), "--device", "cpu", "--quick", "--sections", "machine,peak,nes",
                           "--work", str(tmp_path / "work")]) == 0
    markdown, numbers = read(out)
    assert list(numbers) == ["machine", "peak", "nes"]
    assert numbers["machine"]["torch"] == torch.__version__
    assert numbers["peak"]["fp32_tflops"] > 0 and numbers["peak"]["copy_gbs"] > 0
    case = numbers["nes"]["cases"][0]
    assert case["gflops"] > 0 and case["members"] == 16
    assert numbers["nes"]["nes_estimate"]["population"] == 64
    assert "| dim | batch | members |" in markdown and "## peak" in markdown


def test_bad_arguments_are_one_line_errors(gpu_check, tmp_path, capsys):
    with pytest.raises(SystemExit):
        gpu_check.main(["--out", str(tmp_path), "--sections", "machine,nes,gpu"])
    assert "unknown sections ['gpu']" in capsys.readouterr().err
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            gpu_check.main(["--out", str(tmp_path)])
        assert "no CUDA device is available" in capsys.readouterr().err
    assert not (tmp_path / "gpu_check.md").exists()


def test_a_section_without_time_is_skipped_and_says_so(gpu_check, tmp_path):
    out = tmp_path / "out"
    gpu_check.main(["--out", str(out), "--device", "cpu", "--quick", "--sections", "machine,cell", "--budget", "0.5",
                    "--work", str(tmp_path / "work")])
    markdown, numbers = read(out)
    assert numbers["cell"] == {"skipped": True} and "skipped:" in markdown
    assert numbers["machine"]["cpu_count"] >= 1


@pytest.mark.slow
def test_every_section_on_the_cpu(gpu_check, tmp_path):
    out = tmp_path / "out"
    assert gpu_check.main(["--out", str(out), "--device", "cpu", "--quick", "--work", str(tmp_path / "work")]) == 0
    markdown, numbers = read(out)
    assert list(numbers) == list(gpu_check.SECTIONS)
    assert not any("error" in n for n in numbers.values()), {k: n.get("error") for k, n in numbers.items()}
    assert numbers["cuda_tests"]["rc"] in (0, 5) and "skipped" in numbers["cuda_tests"]["summary"]  # no GPU: skipped
    cases = {(c["model"], c["setting"]) for c in numbers["train_steps"]["cases"]}
    assert len(cases) == 9 and all(c["images_per_s"] > 0 for c in numbers["train_steps"]["cases"])
    assert numbers["probe"]["cpu"]["rc"] == 0
    assert numbers["cell"]["units_done"] == numbers["cell"]["units_planned"] == 2
    assert numbers["ddp"]["test_loss_difference"] < 1e-3  # 2 gloo ranks == 1 process
    assert sorted(p.name for p in out.iterdir()) == ["cell.log", "cuda_tests.log", "ddp.log", "gpu_check.json",
                                                     "gpu_check.md", "probe.log"]  # at most 8 files come back
