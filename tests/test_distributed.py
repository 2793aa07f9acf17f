"""Several processes, one training run: real torchrun gloo ranks on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lowbit.train.distributed import check_divisible, from_environment

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(script: Path, *args: str, nproc: int = 2, timeout: float = 240) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
               f"--master_port={free_port()}", str(script), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def test_rendezvous_variables_are_checked():
    assert from_environment({}) is None
    with pytest.raises(ValueError, match="MASTER_ADDR, MASTER_PORT are not set. Start it with torchrun"):
        from_environment({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2"})
    full = {"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}
    rank = from_environment(full)
    assert (rank.rank, rank.world_size, rank.is_main) == (1, 2, False)
    assert from_environment({**full, "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1"}) is None  # one process
    with pytest.raises(ValueError, match="do not make a valid rank"):
        from_environment({**full, "RANK": "2"})
    with pytest.raises(ValueError, match="batch_size=30 is not divisible by the world size 4.*batch_size=28"):
        check_divisible(30, 4)


def test_more_ranks_than_gpus_is_a_clear_error(monkeypatch):
    """Rank LOCAL_RANK=1 of a CUDA run on a 1-GPU machine (the GPU count is patched: no GPU here; the lent
    GPU machine checks it for real in benchmarks/gpu_check.py's ddp section)."""
    from lowbit.train.distributed import Distributed

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert Distributed(rank=0, local_rank=0, world_size=2).device("cuda") == torch.device("cuda", 0)
    with pytest.raises(ValueError, match=r"LOCAL_RANK=1 on cuda:1, but this machine has 1 CUDA device.*--nproc_per_node 1"):
        Distributed(rank=1, local_rank=1, world_size=2).device("cuda")
    assert Distributed(rank=1, local_rank=1, world_size=2).device("cpu") == torch.device("cpu")


def test_sync_batchnorm_on_two_gloo_ranks_equals_one_process(tmp_path):
    result = torchrun(HERE / "distributed" / "sync_bn_check.py", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    for rank in (0, 1):
        diff = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert diff["synced_modules"] == 2
        for key in ("output", "input_grad", "param_grad", "running"):
            assert diff[key] < 1e-5, (rank, key, diff)


# ---- `torchrun -m lowbit train`: one run over 2 gloo ranks


TINY = ["data.train_subset=128", "data.test_subset=96", "data.batch_size=32", "run.epochs=2", "run.tensorboard=false",
        "run.threads=1", "augment.crop_padding=2", "schedule.warmup_epochs=0.5"]  # 4 steps per epoch
RESNET = ["model.name=resnet9", "model.width_mult=0.125", "data.image_size=null"]  # BatchNorm in every block


def lowbit_train(runs_dir: Path, *overrides: str, nproc: int = 0, resume: Path = None, env=None) -> Path:
    """`lowbit train` in one process (nproc=0) or under torchrun with ``nproc`` ranks; returns the run directory."""
    args = ["train", "--quiet", *(["--resume", str(resume)] if resume else ["--runs-dir", str(runs_dir), *TINY, *overrides])]
    if nproc:
        command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
                   f"--master_port={free_port()}", "-m", "lowbit", *args]
    else:
        command = [sys.executable, "-m", "lowbit", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    result.run_dir = resume or next((p for p in runs_dir.iterdir() if p.is_dir()), None) if runs_dir.exists() else None
    return result


def final_weights(run_dir: Path):
    import torch

    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)["model"]


def max_difference(a, b) -> float:
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].is_floating_point())


@pytest.fixture(scope="module")
def resnet_runs(tmp_path_factory):
    """ResNet-9 (BatchNorm) on digits: one process, and 2 ranks with model.sync_bn (shared by three tests)."""
    root = tmp_path_factory.mktemp("resnet")
    one = lowbit_train(root / "one", *RESNET)
    two = lowbit_train(root / "two", *RESNET, "model.sync_bn=true", nproc=2)
    assert one.returncode == 0, one.stderr[-2000:]
    assert two.returncode == 0, two.stderr[-2000:]
    return one, two


def _same_run(one, two, tolerance: float) -> None:
    from lowbit.runs import read_records

    assert max_difference(final_weights(one.run_dir), final_weights(two.run_dir)) < tolerance
    m1, m2 = read_records(one.run_dir / "metrics.csv"), read_records(two.run_dir / "metrics.csv")
    assert len(m2) == 2 and [r["test_acc"] for r in m1] == [r["test_acc"] for r in m2]
    assert abs(m1[-1]["train_loss"] - m2[-1]["train_loss"]) < 1e-5
    assert two.stdout.count("run directory:") == 1  # rank 0 alone reports


def test_two_gloo_ranks_reproduce_one_process_without_batchnorm(tmp_path):
    one = lowbit_train(tmp_path / "one", "model.name=lenet5")
    two = lowbit_train(tmp_path / "two", "model.name=lenet5", nproc=2)
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-2000:]
    _same_run(one, two, 1e-5)  # 8 steps; only the order of the gradient sums differs


def test_two_gloo_ranks_with_sync_batchnorm_reproduce_one_process(resnet_runs):
    _same_run(*resnet_runs, 1e-5)


def test_per_rank_batchnorm_differs_from_one_process(tmp_path, resnet_runs):
    """Without model.sync_bn each rank normalises by its half of the batch: not the single-process run."""
    per_rank = lowbit_train(tmp_path / "two", *RESNET, nproc=2)
    assert per_rank.returncode == 0, per_rank.stderr[-2000:]
    assert max_difference(final_weights(resnet_runs[0].run_dir), final_weights(per_rank.run_dir)) > 1e-3


def test_two_ranks_killed_and_resumed_equal_an_uninterrupted_run(tmp_path, resnet_runs):
    import os

    from lowbit.train.loop import INTERRUPT_ENV

    env = {**os.environ, INTERRUPT_ENV: "5"}  # a real SIGINT in both ranks after step 5 of 8 (in epoch 2)
    cut = lowbit_train(tmp_path / "cut", *RESNET, "model.sync_bn=true", nproc=2, env=env)
    assert cut.returncode != 0 and "Continue with: lowbit train --resume" in cut.stderr, cut.stderr[-2000:]
    resumed = lowbit_train(tmp_path / "cut", nproc=2, resume=cut.run_dir)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert max_difference(final_weights(resnet_runs[1].run_dir), final_weights(cut.run_dir)) == 0.0  # bit for bit


def test_bad_distributed_setups_fail_before_training(tmp_path):
    import os

    bad = lowbit_train(tmp_path / "bad", "model.name=lenet5", "data.batch_size=33", nproc=2)
    assert bad.returncode != 0 and "data.batch_size=33 is not divisible by the world size 2" in bad.stderr
    env = {**os.environ, "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2"}
    env.pop("MASTER_ADDR", None), env.pop("MASTER_PORT", None)
    missing = lowbit_train(tmp_path / "missing", "model.name=lenet5", env=env)
    assert missing.returncode == 2 and "MASTER_ADDR, MASTER_PORT are not set" in missing.stderr
    assert not (tmp_path / "bad").exists() and not (tmp_path / "missing").exists()
