"""Several processes, one training run: real torchrun gloo ranks on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

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


def test_sync_batchnorm_on_two_gloo_ranks_equals_one_process(tmp_path):
    result = torchrun(HERE / "distributed" / "sync_bn_check.py", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    for rank in (0, 1):
        diff = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert diff["synced_modules"] == 2
        for key in ("output", "input_grad", "param_grad", "running"):
            assert diff[key] < 1e-5, (rank, key, diff)
