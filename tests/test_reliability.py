"""Nothing lost, nothing escapes (issue #14): real processes, real files, injected faults.

Each lowbit run here is a real process forked from the test process
(``tests/faults.py``): it can be SIGKILLed, can meet a full disk at its k-th
write, and two of them can start at one instant. What is checked is what a
user sees: exit codes, one-line messages, the files left, and that a resumed
run ends equal to one that was never disturbed.
"""

from __future__ import annotations

import errno
import multiprocessing
import os
import pickle
import random
import signal
import socket
import stat
import struct
import sys
import gzip
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from faults import Fault, run_lowbit  # noqa: E402

import lowbit.analysis.command  # noqa: E402,F401  (imported before forking: children start fast)
import lowbit.probe.command  # noqa: E402,F401
import lowbit.train  # noqa: E402,F401
from lowbit.files import StorageError, atomic_write_text, file_mode  # noqa: E402

torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)  # imports torch._dynamo once, here, not in every child
import lowbit.analysis.preflight  # noqa: E402,F401
import lowbit.train.preflight  # noqa: E402,F401
from lowbit.runs import (  # noqa: E402
    DirectoryInUse,
    DirectoryLock,
    RecordWriter,
    RecordsRecovered,
    check_run_name,
    commit_path,
    create_run_dir,
    read_records,
)

TRAIN = ["train", "--quiet", "run.epochs=2", "data.train_subset=128", "data.test_subset=64",
         "run.tensorboard=false", "run.threads=1"]  # digits: 2 steps per epoch, a second in all
PROBE = {
    "name": "tiny",
    "task": {"batch_size": 128},
    "probe": {"dims": [3], "inits": 1, "batches": 3, "layers": "all"},
    "estimators": [{"name": "cdg", "eps": 0.1}, {"name": "ste", "surrogate": "ste_clipped"}],
    "measure": {"lr_grid": {"num": 20}, "curve_points": 5},
    "threads": 1,
}


def only_run(folder: Path) -> Path:
    (run,) = [p for p in Path(folder).iterdir() if p.is_dir()]
    return run


def train_outcome(run_dir: Path):
    """What a training run computed: its metrics (less wall time) and its final weights."""
    rows = [{k: v for k, v in r.items() if k != "seconds"} for r in read_records(run_dir / "metrics.csv")]
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    return rows, state["model"], state["complete"]


def same_train(a: Path, b: Path) -> bool:
    rows_a, weights_a, done_a = train_outcome(a)
    rows_b, weights_b, done_b = train_outcome(b)
    return rows_a == rows_b and done_a and done_b and all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)


def probe_outcome(run_dir: Path):
    """A probe's records, less the timing rows (the only ones that differ between equal runs)."""
    return [r for r in read_records(run_dir / "records.csv", text_columns=("unit",)) if r["metric"] != "seconds"]


@pytest.fixture(scope="module", autouse=True)
def _warm_parent(tmp_path_factory, probe_file):
    """One run of each command in the test process first: the forked children then find every module
    imported, the digits loaded and matplotlib's fonts cached (0.7 s a training child instead of 3 s)."""
    from contextlib import redirect_stderr, redirect_stdout
    from io import StringIO

    from lowbit.cli import main

    folder = tmp_path_factory.mktemp("warm")
    with redirect_stdout(StringIO()), redirect_stderr(StringIO()):
        assert main(TRAIN + ["--runs-dir", str(folder)]) == 0
        assert main(["probe", str(probe_file), "--quiet", "--runs-dir", str(folder)]) == 0


@pytest.fixture(scope="module")
def probe_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("probe") / "probe.yaml"
    path.write_text(yaml.safe_dump(PROBE))
    return path


@pytest.fixture(scope="module")
def train_reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("train-ref")
    result = run_lowbit(TRAIN + ["--runs-dir", str(root)], Fault("count", 0, root))
    assert result.rc == 0, result.err
    return only_run(root), result.writes


@pytest.fixture(scope="module")
def probe_reference(tmp_path_factory, probe_file):
    root = tmp_path_factory.mktemp("probe-ref")
    result = run_lowbit(["probe", str(probe_file), "--quiet", "--runs-dir", str(root)], Fault("count", 0, root))
    assert result.rc == 0, result.err
    return only_run(root), result.writes


# ----------------------------------------------------------------------------- 1. locks


def _make_run_dir(root, barrier, out):
    barrier.wait()  # all six call create_run_dir at the same instant
    try:
        out.put(str(create_run_dir("same", root)))
    except BaseException as error:  # noqa: BLE001
        out.put(f"ERROR {type(error).__name__}: {error}")


def test_create_run_dir_is_race_free_across_six_processes(tmp_path):
    ctx = multiprocessing.get_context("fork")
    for round_ in range(3):
        barrier, out = ctx.Barrier(6), ctx.Queue()
        procs = [ctx.Process(target=_make_run_dir, args=(tmp_path / str(round_), barrier, out)) for _ in range(6)]
        for p in procs:
            p.start()
        results = [out.get(timeout=30) for _ in procs]
        for p in procs:
            p.join(timeout=30)
        assert not [r for r in results if r.startswith("ERROR")], results
        assert len(set(results)) == 6  # six different folders, all made


def _hold_lock(run_dir, ready, release):
    lock = DirectoryLock(run_dir, "run").acquire()
    ready.set()
    release.wait(60)
    lock.release()


def test_a_run_in_use_is_refused_by_every_command_and_a_dead_holder_is_taken_over(tmp_path):
    root = tmp_path / "runs"
    assert run_lowbit(TRAIN + ["--runs-dir", str(root), "run.epochs=1"]).rc == 0
    run = only_run(root)
    before = (run / "metrics.csv").read_bytes()
    ctx = multiprocessing.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(run, ready, release))
    holder.start()
    assert ready.wait(30)
    host = socket.gethostname()
    for argv in (["train", "--resume", str(run)], ["report", str(run)]):
        result = run_lowbit(argv)
        assert result.rc == 2, result.err
        (line,) = result.err.strip().splitlines()
        assert f"in use by pid {holder.pid} on host {host}" in line and "wait for that process" in line
    assert (run / "metrics.csv").read_bytes() == before  # nothing was written meanwhile
    os.kill(holder.pid, signal.SIGKILL)  # the holder dies without releasing: the kernel drops its flock
    holder.join()
    result = run_lowbit(["report", str(run)])
    assert result.rc == 0, result.err  # the stale lock is taken over


def test_two_resumes_started_together_one_runs_one_refuses(tmp_path, train_reference):
    reference, _ = train_reference
    root = tmp_path / "runs"
    os.environ["LOWBIT_TEST_INTERRUPT_AT_STEP"] = "1"
    try:
        assert run_lowbit(TRAIN + ["--runs-dir", str(root)]).rc == 130  # stopped after step 1, checkpoint kept
    finally:
        del os.environ["LOWBIT_TEST_INTERRUPT_AT_STEP"]
    run = only_run(root)
    ctx = multiprocessing.get_context("fork")
    barrier, out = ctx.Barrier(2), ctx.Queue()

    def resume():
        barrier.wait()
        result = run_lowbit(["train", "--quiet", "--resume", str(run)])
        out.put((result.rc, result.err))

    procs = [ctx.Process(target=resume) for _ in range(2)]
    for p in procs:
        p.start()
    results = sorted(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join()
    codes = [rc for rc, _ in results]
    assert codes == [0, 2], results
    assert "in use by pid" in results[1][1]
    assert same_train(run, reference)  # 2 epochs, 2 metric rows, the weights of an undisturbed run


def test_probe_resume_refuses_while_the_run_is_held_and_report_reads_around_it(tmp_path, probe_file):
    root = tmp_path / "runs"
    assert run_lowbit(["probe", str(probe_file), "--quiet", "--runs-dir", str(root)]).rc == 0
    run = only_run(root)
    with DirectoryLock(run, "run"):
        result = run_lowbit(["probe", "--resume", str(run)])
        assert result.rc == 2 and f"pid {os.getpid()}" in result.err
        with pytest.raises(DirectoryInUse):
            DirectoryLock(run, "run").acquire()


# ----------------------------------------------------------------------------- 2. atomic records


def test_records_transaction_is_all_or_nothing(tmp_path, monkeypatch):
    path = tmp_path / "records.csv"
    writer = RecordWriter(path)
    writer.write_many([{"unit": "a", "value": 1.0}, {"unit": "a", "value": 2.0}])
    real_write = os.write
    calls = {"n": 0}

    def full_disk(fd, data):  # the second append meets a full disk after half its bytes
        calls["n"] += 1
        real_write(fd, bytes(memoryview(data)[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full_disk)
    with pytest.raises(StorageError, match="disk full .*records.csv"):
        writer.write_many([{"unit": "b", "value": float(i)} for i in range(50)])
    monkeypatch.setattr(os, "write", real_write)
    assert [r["unit"] for r in read_records(path, text_columns=("unit",))] == ["a", "a"]  # readers see no torn rows
    # a torn tail that even the truncation could not remove (a kill): a reader ignores it, a writer drops it
    with path.open("a") as handle:
        handle.write("b,0.0\r\nb,1.")
    assert len(read_records(path)) == 2
    with pytest.warns(RecordsRecovered, match="dropped 2 of the rows"):
        writer = RecordWriter(path)
    writer.write_many([{"unit": "c", "value": 3.0, "extra": "wider"}])  # a new key rewrites atomically
    assert [(r["unit"], r["extra"]) for r in read_records(path, text_columns=("unit",))] == [("a", None), ("a", None), ("c", "wider")]
    assert commit_path(path).read_text().startswith("rows 3 ")


def _fault_points(total: int, count: int, seed: int) -> list:
    """``count`` write numbers out of 1..total, always the first and the last (a fixed seed)."""
    rng = random.Random(seed)
    middle = rng.sample(range(2, total), min(count, total - 2)) if total > 2 else []
    return sorted({1, total, *middle})


def _probe_after_fault(tmp_path, probe_file, kind, k):
    root = tmp_path / f"{kind}-{k}"
    result = run_lowbit(["probe", str(probe_file), "--quiet", "--runs-dir", str(root)], Fault(kind, k, root))
    runs = [p for p in root.iterdir() if p.is_dir()] if root.exists() else []
    return result, runs


def _check_probe_fault(tmp_path, probe_file, reference, kind, k):
    """A probe cut at its k-th write: one line (disk full) or a SIGKILL; resumed, it equals the reference."""
    result, runs = _probe_after_fault(tmp_path, probe_file, kind, k)
    if kind == "enospc":
        assert result.rc == 2, (k, result.err)
        (line,) = [l for l in result.err.splitlines() if "error" in l]
        assert "disk full (no space left on device)" in line, line
    else:
        assert result.rc == -signal.SIGKILL, (k, result.err)
    if not runs or not (runs[0] / "config.yaml").exists():
        assert kind == "kill" or not runs, k  # a full disk before the run existed leaves no folder behind
        return False  # stopped before the run existed: nothing to resume
    resumed = run_lowbit(["probe", "--quiet", "--resume", str(runs[0])])
    assert resumed.rc == 0, (k, resumed.err)
    assert probe_outcome(runs[0]) == probe_outcome(reference), k
    assert not [p for p in runs[0].rglob(".*.tmp")]  # leftover temporaries removed
    return True


def test_probe_survives_a_full_disk_or_a_kill_inside_a_unit(tmp_path, probe_file, probe_reference):
    reference, writes = probe_reference
    assert writes > 10
    for kind in ("enospc", "kill"):
        for k in _fault_points(writes, 1, seed=14)[1:-1] + [writes // 2]:  # inside the records, not the report
            assert _check_probe_fault(tmp_path, probe_file, reference, kind, k)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["enospc", "kill"])
def test_probe_survives_a_fault_at_every_write(tmp_path, probe_file, probe_reference, kind):
    reference, writes = probe_reference
    for k in range(1, writes + 1):
        _check_probe_fault(tmp_path, probe_file, reference, kind, k)


def test_probe_resume_drops_a_torn_unit_and_recomputes_only_it(tmp_path, probe_file, probe_reference):
    reference, _ = probe_reference
    root = tmp_path / "runs"
    os.environ.pop("LOWBIT_TEST_INTERRUPT_AT_STEP", None)
    assert run_lowbit(["probe", str(probe_file), "--quiet", "--runs-dir", str(root)]).rc == 0
    run = only_run(root)
    rows = read_records(run / "records.csv", text_columns=("unit",))
    last = rows[-1]["unit"]
    keep = [r for r in rows if r["unit"] != last]
    from lowbit.runs import rewrite_records

    rewrite_records(run / "records.csv", keep)  # the run as if it had committed every unit but the last
    torn = [r for r in rows if r["unit"] == last][:5]
    with (run / "records.csv").open("a", newline="") as handle:  # ... and died 5 rows into the last one
        import csv

        csv.DictWriter(handle, fieldnames=list(rows[0])).writerows(torn)
        handle.write("dim=3,torn")
    (run / ".records.csv.1234abcd.tmp").write_text("left by a kill")
    result = run_lowbit(["probe", "--quiet", "--resume", str(run)])
    assert result.rc == 0, result.err
    assert "warning" in result.err and "dropped 6 of the rows" in result.err
    assert probe_outcome(run) == probe_outcome(reference)
    assert not (run / ".records.csv.1234abcd.tmp").exists()
    assert run_lowbit(["report", str(run)]).rc == 0


# ----------------------------------------------------------------------------- train under faults


def _check_train_fault(tmp_path, reference, kind, k):
    root = tmp_path / f"{kind}-{k}"
    result = run_lowbit(TRAIN + ["--runs-dir", str(root)], Fault(kind, k, root))
    assert result.rc == (2 if kind == "enospc" else -signal.SIGKILL), (k, result.err)
    if kind == "enospc":
        (line,) = [l for l in result.err.splitlines() if "error" in l]
        assert "disk full" in line
    runs = [p for p in root.iterdir() if p.is_dir()] if root.exists() else []
    if not runs or not (runs[0] / "config.yaml").exists():
        return
    resumed = run_lowbit(["train", "--quiet", "--resume", str(runs[0])])
    assert resumed.rc == 0, (k, resumed.err)
    assert same_train(runs[0], reference), k


def test_train_survives_a_kill_between_epochs(tmp_path, train_reference):
    reference, writes = train_reference
    _check_train_fault(tmp_path, reference, "kill", _fault_points(writes, 1, seed=3)[1])


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["enospc", "kill"])
def test_train_survives_a_fault_at_sampled_writes(tmp_path, train_reference, kind):
    reference, writes = train_reference
    for k in _fault_points(writes, 12, seed=3 if kind == "kill" else 4):
        _check_train_fault(tmp_path, reference, kind, k)


def test_a_full_disk_during_the_checkpoint_is_one_line_and_resumable(tmp_path, train_reference):
    reference, _ = train_reference
    # the first checkpoint is the 7th write: config.yaml, .started-config.yaml, meta.yaml, model.yaml,
    # the first metrics row and its commit come before it
    result = run_lowbit(TRAIN + ["--runs-dir", str(tmp_path)], Fault("enospc", 7, tmp_path))
    assert result.rc == 2
    (line,) = result.err.strip().splitlines()
    assert "disk full (no space left on device) at" in line and "checkpoints/last.pt" in line
    assert "lowbit train --resume" in line
    run = only_run(tmp_path)
    assert run_lowbit(["train", "--quiet", "--resume", str(run)]).rc == 0
    assert same_train(run, reference)


def test_analyze_survives_a_full_disk_and_resumes_to_the_same_records(tmp_path, train_reference):
    reference, _ = train_reference
    argv = ["analyze", "weights", "--quiet", "train={}", f"checkpoints={{a: {reference}}}", "layers=[conv1, fc1]"]
    clean = run_lowbit(argv + ["--runs-dir", str(tmp_path / "clean")], Fault("count", 0, tmp_path / "clean"))
    assert clean.rc == 0, clean.err
    root = tmp_path / "full"
    result = run_lowbit(argv + ["--runs-dir", str(root)], Fault("enospc", clean.writes // 2, root))
    assert result.rc == 2 and "disk full" in result.err and "lowbit analyze weights --resume" in result.err
    run = only_run(root)
    assert run_lowbit(["analyze", "weights", "--quiet", "--resume", str(run)]).rc == 0
    assert read_records(run / "weights.csv") == read_records(only_run(tmp_path / "clean") / "weights.csv")


# ----------------------------------------------------------------------------- 3. the honest NaN stop


def test_a_blow_up_on_the_last_step_of_an_epoch_keeps_the_last_finite_checkpoint(tmp_path):
    # one step per epoch; epoch 2's lr is 1e32 x larger (a step schedule with gamma 1e32): its only
    # update is also the last of the epoch, so evaluation and the checkpoint follow it directly
    argv = ["train", "--quiet", "--runs-dir", str(tmp_path), "run.epochs=2", "data.train_subset=64",
            "data.test_subset=64", "data.batch_size=64", "schedule.name=step", "schedule.milestones=[0.5]",
            "schedule.gamma=1e32", "schedule.warmup_epochs=0", "run.tensorboard=false"]
    result = run_lowbit(argv)
    assert result.rc == 1, result.err
    (line,) = result.err.strip().splitlines()
    assert "training diverged" in line and "after step 2 (epoch 2, batch 1 of 1)" in line
    assert "the last good checkpoint" in line and "(end of epoch 1, step 1) is kept" in line
    run = only_run(tmp_path)
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert (state["epoch"], state["step"]) == (1, 1)
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())
    assert len(read_records(run / "metrics.csv")) == 1  # the bad epoch left no row


def test_a_blow_up_before_any_checkpoint_says_none_was_written(tmp_path):
    argv = ["train", "--quiet", "--runs-dir", str(tmp_path), "run.epochs=1", "data.train_subset=64",
            "data.test_subset=64", "optim.lr=1e35", "schedule.warmup_epochs=0", "run.tensorboard=false"]
    result = run_lowbit(argv)
    assert result.rc == 1
    assert "no checkpoint was written yet" in result.err and "epoch 1" in result.err
    assert not (only_run(tmp_path) / "checkpoints" / "last.pt").exists()


# ----------------------------------------------------------------------------- 4. bounded inputs


class _Forged:
    def __init__(self, reduce):
        self.reduce = reduce

    def __reduce__(self):
        return self.reduce


def _cifar_folder(root: Path, data, labels) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps({b"data": data, b"labels": labels}, protocol=2))
    return root


def test_hostile_cifar_batches_are_refused_before_allocation(tmp_path):
    from lowbit.data import DataError, load_dataset

    zero_stride = _Forged((np.ndarray, ((1_000_000, 3072), np.dtype("u1"), b"\x00", 0, (0, 0))))
    root = _cifar_folder(tmp_path / "a", zero_stride, [0])
    size = (root / "cifar-10-batches-py" / "test_batch").stat().st_size
    assert size < 300
    result = run_lowbit(["train", "--quiet", "data.dataset=cifar10", "--data-dir", str(root), "--runs-dir", str(tmp_path / "r")])
    assert result.rc == 2 and "refusing to call numpy.ndarray" in result.err
    assert not (tmp_path / "r").exists()
    reconstruct = getattr(np, "_core", getattr(np, "core", None)).multiarray._reconstruct
    short = _Forged((reconstruct, (np.ndarray, (0,), b"b"), (1, (10_000, 3072), np.dtype("u1"), False, b"\x00" * 10)))
    with pytest.raises(DataError, match="needs 30,720,000 bytes of data, the file holds 10"):
        load_dataset("cifar10", "test", data_dir=_cifar_folder(tmp_path / "b", short, [0] * 10_000))
    images = np.zeros((2, 3072), np.uint8)
    with pytest.raises(DataError, match="holds float64 values .*not integers"):
        load_dataset("cifar10", "test", data_dir=_cifar_folder(tmp_path / "c", images, [1.5, 0.0]))


def test_an_mnist_gzip_bomb_costs_at_most_what_its_header_allows(tmp_path):
    folder = tmp_path / "mnist"
    folder.mkdir()
    n = 60_000  # an honest-looking header whose body inflates far beyond it
    with gzip.open(folder / "train-images-idx3-ubyte.gz", "wb", compresslevel=9) as handle:
        handle.write(struct.pack(">IIII", 0x803, n, 28, 28))
        block = bytes(1 << 20)
        for _ in range(256):  # 256 MiB of zeros in a ~250 kB file
            handle.write(block)
    with gzip.open(folder / "train-labels-idx1-ubyte.gz", "wb") as handle:
        handle.write(struct.pack(">II", 0x801, n) + bytes(n))
    argv = ["train", "--quiet", "data.dataset=mnist", "--data-dir", str(tmp_path), "--runs-dir", str(tmp_path / "r")]
    baseline = run_lowbit(["report", str(tmp_path / "no-such-run")])  # the same forked process, reading nothing
    result = run_lowbit(argv)
    assert result.rc == 2 and "decompression bomb" in result.err, result.err
    assert result.peak_rss_mb - baseline.peak_rss_mb < 100  # refused from the header: nothing inflated
    with gzip.open(folder / "train-images-idx3-ubyte.gz", "wb") as handle:  # a header that lies by a little
        handle.write(struct.pack(">IIII", 0x803, 100, 28, 28) + bytes(100 * 784 + 5000))
    result = run_lowbit(argv)
    assert result.rc == 2 and "holds more than 78416 bytes but its header (sizes (100, 28, 28)) promises" in result.err
    assert not (tmp_path / "r").exists()


def test_hostile_yaml_is_refused_before_any_expansion(tmp_path):
    laughs = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi")
    )
    assert len(laughs) < 400
    cases = {
        "laughs.yaml": (laughs, "expands to more than 100,000 values"),
        "deep.yaml": ("a: " + "[" * 3000 + "]" * 3000 + "\n", "nested"),
        "dup.yaml": ("run:\n  epochs: 1\nrun:\n  epochs: 2\n", "duplicate key 'run'"),
        "empty.yaml": ("# nothing but a comment\n", "is empty"),
        "tag.yaml": (f"run: !!python/object/apply:os.system ['touch {tmp_path / 'pwned'}']\n", "could not determine a constructor"),
    }
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        start = time.perf_counter()
        result = run_lowbit(["train", str(tmp_path / name), "--runs-dir", str(tmp_path / "r")])
        assert result.rc == 2 and message in result.err, (name, result.err)
        assert len(result.err.strip().splitlines()) == 1, name
        assert time.perf_counter() - start < 20
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "r").exists()


# ----------------------------------------------------------------------------- 5. run names


def test_run_names_are_one_folder_inside_the_runs_dir(tmp_path):
    for name in ["nul\x00byte", "", "tab\tname", "x" * 300]:  # (a NUL cannot reach argv: names from files)
        with pytest.raises(ValueError, match="a run name is one folder name inside --runs-dir"):
            check_run_name(name)
    runs = tmp_path / "deep" / "runs"
    for name, argv in [("../../escaped", ["train", "run.name=../../escaped"]), ("/tmp/absolute", ["probe", "name=/tmp/absolute"]),
                       ("a/b", ["analyze", "landscape", "name=a/b"]), ("..", ["train", "run.name=.."])]:
        result = run_lowbit(argv + ["--runs-dir", str(runs)])
        assert result.rc == 2, (argv, result.err)
        assert "name" in result.err and "one folder name" in result.err
    assert not (tmp_path / "deep").exists() and not Path("/tmp/absolute").exists()
    assert not (tmp_path / "escaped").exists()


# ----------------------------------------------------------------------------- 6. resume checks the config


def test_resume_refuses_an_edited_config_unless_forced(tmp_path, train_reference, probe_file):
    os.environ["LOWBIT_TEST_INTERRUPT_AT_STEP"] = "1"
    try:
        assert run_lowbit(TRAIN + ["--runs-dir", str(tmp_path / "t")]).rc == 130
        assert run_lowbit(["probe", str(probe_file), "--quiet", "--runs-dir", str(tmp_path / "p")]).rc in (0, 130)
    finally:
        del os.environ["LOWBIT_TEST_INTERRUPT_AT_STEP"]
    run = only_run(tmp_path / "t")
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["optim"]["lr"], config["run"]["epochs"] = 0.5, 3
    config["data"]["data_dir"] = str(tmp_path)  # a documented change: allowed
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    result = run_lowbit(["train", "--resume", str(run)])
    assert result.rc == 2
    assert "optim.lr (0.05 -> 0.5)" in result.err and "run.epochs (2 -> 3)" in result.err and "data.data_dir (" not in result.err
    assert "--force" in result.err
    assert run_lowbit(["train", "--quiet", "--resume", str(run), "--force"]).rc == 0
    assert len(read_records(run / "metrics.csv")) == 3
    probe_run = only_run(tmp_path / "p")
    config = yaml.safe_load((probe_run / "config.yaml").read_text())
    config["estimators"][0]["eps"] = 0.2
    (probe_run / "config.yaml").write_text(yaml.safe_dump(config))
    result = run_lowbit(["probe", "--resume", str(probe_run)])
    assert result.rc == 2 and "estimators" in result.err and "differs from the config the run started with" in result.err


# ----------------------------------------------------------------------------- 7. errors before work, one line


def test_late_checks_run_before_data_and_before_the_run_directory(tmp_path):
    evil = tmp_path / "evil.pt"
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil.write_bytes(pickle.dumps({"model": Evil()}))
    shaped = tmp_path / "other.pt"
    torch.save({"model": {"conv1.weight": torch.zeros(6, 3, 5, 5)}}, shaped)
    runs = tmp_path / "runs"
    cases = [
        (["model.kwargs={bogus: 1}"], "model.kwargs): cannot build model 'lenet5'"),
        (["optim.extra={kappa: 2}"], "optim: optim.extra"),
        (["quant={w_bitz: 8}"], "quant"),
        (["augment.erasing={p: 2}"], "erasing['p'] must be in [0, 1]"),
        (["augment.crop_padding=100000"], "augment.crop_padding=100000 is larger than the 32x32 images"),
        (["run.epochs=1e20"], "run.epochs"),
        (["schedule.warmup_epochs=1e30"], "longer than the run"), (["schedule.warmup_epochs=1e300"], "beyond float32"),
        (["schedule.gamma=.inf"], "schedule.gamma: expected a finite number"),
        (["data.batch_size=1e12"], "data.batch_size=1000000000000 is beyond any batch"),
        ([f"run.init_from={evil}"], "run.init_from: cannot read"),
        ([f"run.init_from={shaped}"], "first difference: 'conv1.weight' is (6, 3, 5, 5) in the checkpoint but (6, 1, 5, 5)"),
    ]
    for overrides, message in cases:
        result = run_lowbit(["train", *overrides, "--runs-dir", str(runs)])
        assert result.rc == 2, (overrides, result.err)
        assert message in result.err, (overrides, result.err)
        assert "Traceback" not in result.err
        assert not runs.exists(), overrides  # refused before any folder was made
    assert not marker.exists()


def test_analyze_validates_before_making_its_run_directory(tmp_path):
    runs = tmp_path / "runs"
    cases = [
        (["weights", "layers=[conv9]", "train={a: [run.epochs=1]}"], "layer 'conv9'"),
        (["landscape", "source.checkpoint=/nonexistent/run"], "source.checkpoint"),
        (["landscape", "source.train_overrides=[model.name=lenet55]"], "unknown model 'lenet55'"),
        (["bn-smoothness", "data.dataset=cifar11"], "unknown dataset 'cifar11'"),
        (["landscape", "interpolation.end=/no/such.pt"], "interpolation.end"),
    ]
    for argv, message in cases:
        result = run_lowbit(["analyze", *argv, "--runs-dir", str(runs)])
        assert result.rc == 2 and message in result.err, (argv, result.err)
        assert not runs.exists(), argv


def test_os_errors_are_one_line_with_the_path_and_debug_keeps_the_traceback(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = run_lowbit(TRAIN + ["--runs-dir", str(blocker / "runs")])
    assert result.rc == 2
    (line,) = result.err.strip().splitlines()
    assert "a part of the path is not a directory" in line and str(blocker) in line
    debug = run_lowbit(TRAIN + ["--runs-dir", str(blocker / "runs"), "--debug"])
    assert debug.rc == 99 and "Traceback" in debug.err  # --debug lets it escape


# ----------------------------------------------------------------------------- 8. modes


def test_run_files_are_readable_by_collaborators(tmp_path):
    previous = os.umask(0o022)
    try:
        assert file_mode() == 0o644
        result = run_lowbit(TRAIN + ["--runs-dir", str(tmp_path)])
    finally:
        os.umask(previous)
    assert result.rc == 0
    modes = {p.relative_to(tmp_path): stat.S_IMODE(p.stat().st_mode) for p in tmp_path.rglob("*") if p.is_file()}
    assert modes and all(mode == 0o644 for mode in modes.values()), {str(k): oct(v) for k, v in modes.items() if v != 0o644}
    atomic_write_text(tmp_path / "x.txt", "x")


# ----------------------------------------------------------------------------- a real full disk


def test_a_real_full_disk_is_one_line_and_the_run_resumes_when_space_returns(tmp_path, train_reference):
    """A 400 kB tmpfs (needs root to mount; skipped elsewhere): the disk fills up for real during the run."""
    import subprocess

    reference, _ = train_reference
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (not root)")
    try:
        result = run_lowbit(TRAIN + ["--runs-dir", str(disk)])
        assert result.rc == 2, result.err
        (line,) = result.err.strip().splitlines()
        assert "disk full (no space left on device)" in line and "lowbit train --resume" in line
        run = only_run(disk)
        subprocess.run(["mount", "-o", "remount,size=20m", str(disk)], check=True)
        resumed = run_lowbit(["train", "--quiet", "--resume", str(run)])
        assert resumed.rc == 0, resumed.err
        assert same_train(run, reference)
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_a_read_only_runs_dir_is_refused_before_any_data(tmp_path):
    import subprocess

    disk = tmp_path / "ro"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (not root)")
    try:
        for argv in (TRAIN, ["probe", "--quiet"], ["analyze", "weights", "--quiet"]):
            result = run_lowbit(argv + ["--runs-dir", str(disk / "runs")])
            assert result.rc == 2, (argv, result.err)
            (line,) = result.err.strip().splitlines()
            assert f"read-only file system at {str(disk)!r}" in line and "--runs-dir" in line
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
