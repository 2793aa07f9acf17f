"""``run.compile``: torch.compile of the training step against the eager run, checkpoints, resume, errors.

The fast tests compile with dynamo's ``aot_eager`` backend (dynamo's graph capture and AOTAutograd's
forward/backward graphs, run by ATen: no code generation), so they check what lowbit does around
torch.compile in a second or two; the ``inductor`` runs (C++ code generation, 10-40 s on a CPU) are
marked slow. Every comparison is with the eager run of the same config.
"""

from __future__ import annotations

import copy
import sys
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from lowbit.config import ConfigError
from lowbit.runs import read_records
from lowbit.train import CompileFailed, TrainingInterrupted, load_checkpoint, load_train_config, train
from lowbit.train import compiler
from lowbit.train.loop import INTERRUPT_ENV

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_train import tiny_overrides  # noqa: E402 (lenet5 on 256 digits, 8 steps per epoch, 2 epochs)

FAST = {"run.compile": "true", "run.compile_backend": "aot_eager"}


def tiny(**extra: object):
    return load_train_config(None, tiny_overrides(**extra))


def weights(run_dir: Path) -> dict:
    return load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]


def assert_same_run(a: Path, b: Path, atol: float) -> None:
    """Equal metrics (but the timings) and weights within ``atol``; the same checkpoint keys."""
    wa, wb = weights(a), weights(b)
    assert list(wa) == list(wb)  # the plain module's names: no _orig_mod. prefix
    for key in wa:
        torch.testing.assert_close(wb[key], wa[key], atol=atol, rtol=0, msg=key)
    ra, rb = read_records(a / "metrics.csv"), read_records(b / "metrics.csv")
    assert len(ra) == len(rb) > 0
    for x, y in zip(ra, rb):
        assert x.keys() == y.keys()
        for key in x:
            if key != "seconds":
                assert y[key] == pytest.approx(x[key], abs=atol), key


def compiled_frames() -> int:
    from torch._dynamo.utils import counters

    return counters["frames"]["ok"]


# ---------------------------------------------------------------- config


def test_bad_values_are_config_errors_naming_the_valid_ones():
    with pytest.raises(ConfigError, match=r"run.compile must be false, true or a torch.compile mode \(default, "
                                          r"reduce-overhead, max-autotune.*got 'max-autotun' \(did you mean 'max-autotune'\?\)"):
        tiny(**{"run.compile": "max-autotun"})
    with pytest.raises(ConfigError, match=r"run.compile: expected bool or str, got 3"):
        tiny(**{"run.compile": 3})
    with pytest.raises(ConfigError, match=r"run.compile='max-autotune' is a mode of the inductor backend; with "
                                          r"run.compile_backend=eager use run.compile=true"):
        tiny(**{"run.compile": "max-autotune", "run.compile_backend": "eager"})
    run = tiny(**{"run.compile": "true"}).run
    assert (run.compile_mode, run.compile_backend) == ("default", "inductor")
    assert tiny().run.compile_mode is None and tiny(**{"run.compile": "reduce-overhead"}).run.compile_mode == "reduce-overhead"


def test_an_unknown_backend_or_no_cxx_compiler_fails_before_any_data_or_folder(tmp_path):
    with pytest.raises(ValueError, match=r"unknown torch._dynamo backend 'inductr'. Did you mean 'inductor'\?"):
        train(tiny(**{"run.compile": "true", "run.compile_backend": "inductr"}), runs_dir=tmp_path / "a")
    import torch._inductor.config as inductor_config

    # a machine without a C++ compiler (config.patch: a monkeypatch of the option is not undone cleanly on torch 2.11)
    with inductor_config.patch({"cpp.cxx": ("/nonexistent/c++",)}), pytest.raises(
            ValueError, match=r"run.compile=true on the CPU: inductor builds C\+\+ kernels and found no C\+\+ "
                              r"compiler .*use run.compile_backend=aot_eager, or set run.compile=false"):
        train(tiny(**{"run.compile": "true"}), runs_dir=tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_the_compile_flag_overrides_the_config_and_is_checked(tmp_path, capsys):
    from lowbit.cli import main

    assert main(["train", "--quiet", "--runs-dir", str(tmp_path), *tiny_overrides(), "--compile", "max-autotun"]) == 2
    assert "run.compile must be false, true or a torch.compile mode" in capsys.readouterr().err
    from lowbit.train.compiler import parse_compile_flag

    assert [parse_compile_flag(t) for t in ("true", "Off", "max-autotune")] == [True, False, "max-autotune"]


# ---------------------------------------------------------------- compiled runs against eager ones


def test_compiled_run_equals_the_eager_run(tmp_path):
    # grad_stats_every=3: GradientStats' hooks on steps 0, 3, 6, ... (those steps run eagerly: a compiled
    # graph would skip hooks attached after it was traced, and the E rows would be missing)
    extra = {"run.grad_stats_every": 3, "model.act": "rrelu", "augment.mixup_alpha": 0.4, "data.train_subset": 128}
    eager = train(tiny(**extra), run_dir=tmp_path / "eager")
    frames = compiled_frames()
    compiled = train(tiny(**extra, **FAST), run_dir=tmp_path / "compiled")
    assert compiled_frames() > frames  # dynamo did compile the model
    assert_same_run(eager, compiled, atol=1e-6)
    rows = read_records(compiled / "grad_stats.csv")
    assert rows == read_records(eager / "grad_stats.csv") and {r["kind"] for r in rows} == {"G", "E"}
    assert yaml.safe_load((compiled / "config.yaml").read_text())["run"]["compile"] is True
    report = (compiled / "report.md").read_text()
    assert "- execution: run.device cpu, fp32, torch.compile (default, aot_eager)" in report
    assert "- execution: run.device cpu, fp32, eager (no torch.compile)" in (eager / "report.md").read_text()


@pytest.mark.slow  # 4-7 s; the quantizers under torch.compile are tested fast in tests/test_compile_quantizers.py
def test_a_binary_model_compiles_and_trains_as_eager(tmp_path):
    # binary activations and weights (lowbit's sign Functions; the fused C++ kernels step aside while
    # dynamo traces), BatchNorm, flip ratio per binary layer; 2 steps. One graph: no graph break
    extra = {"model.name": "xnor_resnet18", "model.width": 2, "data.image_size": "null", "data.train_subset": 64,
             "data.test_subset": 32, "run.epochs": 1, "optim.name": "adam", "optim.lr": 0.003, "augment.crop_padding": 1}
    eager = train(tiny(**extra), run_dir=tmp_path / "eager")
    from torch._dynamo.utils import counters

    graphs = counters["stats"]["unique_graphs"]
    compiled = train(tiny(**extra, **FAST), run_dir=tmp_path / "compiled")
    assert counters["stats"]["unique_graphs"] - graphs == 1
    assert_same_run(eager, compiled, atol=1e-6)
    assert any(k.startswith("flip_ratio/") for k in read_records(compiled / "metrics.csv")[0])


@pytest.mark.parametrize("first, then", [(False, True), (True, False)], ids=["eager-then-compiled", "compiled-then-eager"])
def test_resume_across_compile_on_and_off_equals_an_uninterrupted_run(tmp_path, monkeypatch, first, then):
    extra = {"run.compile_backend": "aot_eager", "model.act": "rrelu"}
    reference = train(tiny(**extra), run_dir=tmp_path / "reference")
    monkeypatch.setenv(INTERRUPT_ENV, "5")  # a real SIGINT after step 5 of 16 (epoch 1, batch 5)
    with pytest.raises(TrainingInterrupted):
        train(tiny(**extra, **{"run.compile": str(first).lower()}), run_dir=tmp_path / "run")
    monkeypatch.delenv(INTERRUPT_ENV)
    run_dir = tmp_path / "run"
    if then:
        train(resume=run_dir, compile=True)  # the --compile flag
    else:  # or config.yaml edited: run.compile may change on resume
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        config["run"]["compile"] = False
        (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
        train(resume=run_dir)
    assert_same_run(reference, run_dir, atol=1e-6)
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["config"]["run"]["compile"] is then


def test_a_compile_failure_is_one_line_and_the_run_continues_eagerly(tmp_path, capsys):
    import torch._dynamo

    @torch._dynamo.register_backend(name="lowbit_test_broken")
    def broken(graph, example_inputs):  # what a backend without its code generator does
        raise RuntimeError("no code generator for this graph\n(the rest of a long trace)")

    config = tiny(**{"run.compile": "true", "run.compile_backend": "lowbit_test_broken"})
    with pytest.raises(CompileFailed) as info:
        train(config, runs_dir=tmp_path / "runs")
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert str(info.value) == (
        "run.compile=true run.compile_backend=lowbit_test_broken: torch.compile failed at step 1 (BackendCompilerFailed "
        "from RuntimeError: no code generator for this graph); set run.compile=false: "
        f"`lowbit train --resume {run_dir} --compile false` continues this run eagerly (--debug shows torch's trace)"
    )
    assert not (run_dir / "checkpoints" / "last.pt").exists()  # no step was taken
    from lowbit.cli import main  # the command says it in one line too

    assert main(["train", "--quiet", "--runs-dir", str(tmp_path / "cli"), *tiny_overrides(),
                 "run.compile=true", "run.compile_backend=lowbit_test_broken"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("lowbit train: run.compile=true") and len(err.strip().splitlines()) == 1
    # nothing lost: the run resumes eagerly and is the eager run
    resumed = train(resume=run_dir, compile=False)
    eager = train(tiny(), run_dir=tmp_path / "eager")
    assert_same_run(eager, resumed, atol=0.0)


# ---------------------------------------------------------------- inductor (generated C++ kernels)


OLD_RRELU = pytest.mark.xfail(
    compiler._rrelu_draws_differ(), strict=True,
    reason="inductor before torch 2.13 draws RReLU's slopes otherwise (CompileNumericsWarning)")


@pytest.mark.slow
@OLD_RRELU
def test_inductor_run_equals_the_eager_run_within_float_rounding(tmp_path):
    # RReLU and mixup draw random numbers inside the step: the compiled graph draws ATen's
    # (inductor's fallback_random), so the runs differ by float rounding only
    extra = {"model.act": "rrelu", "augment.mixup_alpha": 0.4}
    eager = train(tiny(**extra), run_dir=tmp_path / "eager")
    compiled = train(tiny(**extra, **{"run.compile": "max-autotune"}), run_dir=tmp_path / "compiled")
    assert_same_run(eager, compiled, atol=1e-5)


def test_inductor_with_rrelu_warns_only_on_a_torch_that_draws_its_slopes_otherwise(monkeypatch):
    run = tiny(**{"run.compile": "true"}).run
    rrelu, relu = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.RReLU()), torch.nn.Sequential(torch.nn.ReLU())
    for differ, module, warns in [(True, rrelu, True), (True, relu, False), (False, rrelu, False)]:
        monkeypatch.setattr(compiler, "_rrelu_draws_differ", lambda differ=differ: differ)
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            compiler.compile_module(module, run)
        numerics = [w for w in seen if issubclass(w.category, compiler.CompileNumericsWarning)]
        assert len(numerics) == warns, (differ, module)
        assert all("RReLU" in str(w.message) and "run.compile_backend=aot_eager" in str(w.message) for w in numerics)


@pytest.mark.slow
def test_binary_layers_under_inductor_equal_eager_in_float64():
    """Binary convs through inductor: outputs and gradients of eager's, to float64 rounding
    (a float conv before each binary one keeps sign ties away: tests/binary_nets.py)."""
    from binary_nets import float_then_binary_convs

    eager = float_then_binary_convs()
    twin = copy.deepcopy(eager)
    compiled = torch.compile(twin, backend="inductor")
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    y_eager, y_compiled = eager(x), compiled(x)
    torch.testing.assert_close(y_compiled, y_eager, atol=1e-12, rtol=0)
    y_eager.square().sum().backward()
    y_compiled.square().sum().backward()
    for (name, a), b in zip(eager.named_parameters(), twin.parameters()):
        torch.testing.assert_close(b.grad, a.grad, atol=1e-10, rtol=1e-10, msg=name)


# ---------------------------------------------------------------- CUDA


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_compiled_run_equals_the_eager_cuda_run(tmp_path):
    extra = {"run.device": "cuda", "model.name": "resnet9", "model.width_mult": 0.125, "data.image_size": "null"}
    eager = train(tiny(**extra), run_dir=tmp_path / "eager")
    compiled = train(tiny(**extra, **{"run.compile": "true"}), run_dir=tmp_path / "compiled")
    assert_same_run(eager, compiled, atol=1e-4)  # fp32, TF32 off; inductor's triton kernels reorder sums


# ---------------------------------------------------------------- torchrun


@pytest.mark.slow
def test_two_gloo_ranks_compiled_equal_two_ranks_eager(tmp_path):
    """torch.compile of the DistributedDataParallel wrapper (its DDPOptimizer splits the graph at the buckets)."""
    from test_distributed import final_weights, lowbit_train, max_difference

    eager = lowbit_train(tmp_path / "eager", "model.name=lenet5", nproc=2)
    compiled = lowbit_train(tmp_path / "compiled", "model.name=lenet5", "run.compile=true",
                            "run.compile_backend=aot_eager", nproc=2)
    assert eager.returncode == 0 and compiled.returncode == 0, compiled.stderr[-2000:]
    assert list(final_weights(compiled.run_dir)) == list(final_weights(eager.run_dir))
    assert max_difference(final_weights(eager.run_dir), final_weights(compiled.run_dir)) < 1e-6
    assert [r["test_acc"] for r in read_records(compiled.run_dir / "metrics.csv")] == \
        [r["test_acc"] for r in read_records(eager.run_dir / "metrics.csv")]
