"""The figures of docs/reliability.md, re-measured: faults injected / survived, bad inputs tried / rejected.

    python benchmarks/bench_reliability.py [--signals 20] [--train-writes 40]

Every run is a real lowbit process forked from this one (``tests/faults.py``):

- **faults at writes**: a full disk (ENOSPC after half the bytes) or a SIGKILL
  (after half the bytes) at the k-th write into the runs directory, for every k
  of a probe and an ``analyze weights`` run and ``--train-writes`` sampled k of a
  training run; then ``--resume`` (no fault). Survived = the message was one
  line (full disk) and the resumed run equals an undisturbed one (training:
  metrics and final weights bit for bit; probe and analyze: every record but
  the timings), or the fault came before the run existed and nothing was left.
- **signals at random moments**: SIGKILL / SIGTERM / SIGINT after a random delay
  (fixed seed), then ``--resume``, same comparison.
- **concurrency**: ``create_run_dir`` from 6 processes at one instant; two
  ``train --resume`` started together.
- **bad inputs**: the fuzz suite's cases (``tests/fuzz_cases.py``, seed 14),
  counted by outcome, with the peak memory any hostile file added.

Prints Markdown tables with the CPU and the load average; paste them into
docs/reliability.md.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import signal
import sys
import tempfile
import time
from contextlib import redirect_stderr, redirect_stdout
from io import StringIO
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from faults import Fault, run_lowbit  # noqa: E402
from fuzz_cases import TRAIN_BASE, all_cases  # noqa: E402
from test_fuzz import run_case  # noqa: E402
from test_reliability import PROBE, TRAIN, probe_outcome, same_train  # noqa: E402

from lowbit.cli import main  # noqa: E402
from lowbit.runs import cpu_name, create_run_dir, read_records  # noqa: E402


def only_run(folder: Path):
    runs = [p for p in folder.iterdir() if p.is_dir()] if folder.exists() else []
    return runs[0] if runs else None


def faults_at_writes(work: Path, name: str, argv, resume, equal, ks, kinds=("enospc", "kill")):
    """[(kind, injected, survived, before the run existed)] for a fault at each write number in ``ks``."""
    rows = []
    for kind in kinds:
        injected = survived = early = 0
        for k in ks:
            root = work / f"{name}-{kind}-{k}"
            result = run_lowbit(argv + ["--runs-dir", str(root)], Fault(kind, k, root))
            injected += 1
            errors = [line for line in result.err.splitlines() if ": error: " in line]
            one_line = kind == "kill" or (result.rc == 2 and len(errors) == 1 and "disk full" in errors[0]
                                          and "Traceback" not in result.err)
            run = only_run(root)
            if run is None or not (run / "config.yaml").exists():
                early += 1
                survived += one_line
                continue
            resumed = run_lowbit(resume + [str(run)])
            survived += one_line and resumed.rc == 0 and equal(run)
        rows.append((kind, injected, survived, early))
    return rows


def signals(work: Path, name: str, argv, resume, equal, count: int, seconds: float, rng: random.Random):
    rows = []
    for signum in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT):
        injected = survived = 0
        for i in range(count):
            root = work / f"{name}-sig{int(signum)}-{i}"
            run_lowbit(argv + ["--runs-dir", str(root)], signal_after=(signum, rng.uniform(0.02, seconds)))
            injected += 1
            run = only_run(root)
            if run is None or not (run / "config.yaml").exists():
                survived += 1  # stopped before the run existed: nothing half-made to resume
                continue
            resumed = run_lowbit(resume + [str(run)])
            survived += resumed.rc == 0 and equal(run)
        rows.append((signal.Signals(signum).name, injected, survived))
    return rows


def _make(root, barrier, out):
    barrier.wait()
    try:
        out.put(str(create_run_dir("same", root)))
    except BaseException as error:  # noqa: BLE001
        out.put(f"ERROR {type(error).__name__}")


def concurrency(work: Path, rounds: int = 8):
    ctx = multiprocessing.get_context("fork")
    errors = duplicates = 0
    for r in range(rounds):
        barrier, out = ctx.Barrier(6), ctx.Queue()
        procs = [ctx.Process(target=_make, args=(work / f"mk{r}", barrier, out)) for _ in range(6)]
        for p in procs:
            p.start()
        results = [out.get(timeout=60) for _ in procs]
        for p in procs:
            p.join()
        errors += sum(x.startswith("ERROR") for x in results)
        duplicates += 6 - len(set(results))
    return rounds, errors, duplicates


def two_resumes(work: Path, rounds: int = 5):
    """Two ``train --resume`` of one stopped run, started together: (rounds, one ran and one refused, rows right)."""
    os.environ["LOWBIT_TEST_INTERRUPT_AT_STEP"] = "1"
    roots = []
    try:
        for r in range(rounds):
            root = work / f"pair{r}"
            run_lowbit(TRAIN + ["--runs-dir", str(root)])
            roots.append(only_run(root))
    finally:
        del os.environ["LOWBIT_TEST_INTERRUPT_AT_STEP"]
    ctx = multiprocessing.get_context("fork")
    exclusive = rows_right = 0
    for run in roots:
        barrier, out = ctx.Barrier(2), ctx.Queue()

        def resume(barrier=barrier, out=out, run=run):
            barrier.wait()
            out.put(run_lowbit(["train", "--quiet", "--resume", str(run)]).rc)

        procs = [ctx.Process(target=resume) for _ in range(2)]
        for p in procs:
            p.start()
        codes = sorted(out.get(timeout=300) for _ in procs)
        for p in procs:
            p.join()
        exclusive += codes == [0, 2]
        rows_right += len(read_records(run / "metrics.csv")) == 2
    return rounds, exclusive, rows_right


def issue_repros(work: Path):
    """The three hostile files the issue measured: (what, bytes, outcome, peak MB added, seconds)."""
    import gzip
    import pickle
    import struct

    import numpy as np

    from fuzz_cases import _Reduce, _cifar_batch

    rows = []
    baseline = run_lowbit(["report", str(work / "no-such-run")]).peak_rss_mb
    folder = work / "repro-cifar" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    zero = _cifar_batch(_Reduce((np.ndarray, ((1_000_000, 3072), np.dtype("u1"), b"\0", 0, (0, 0)))),
                        _Reduce((np.ndarray, ((1_000_000,), np.dtype("u1"), b"\0", 0, (0,)))))
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(zero)
    mnist = work / "repro-mnist"
    mnist.mkdir()
    with gzip.open(mnist / "train-images-idx3-ubyte.gz", "wb", compresslevel=9) as handle:
        handle.write(struct.pack(">IIII", 0x803, (1 << 30) // 784, 28, 28))
        for _ in range(1024):
            handle.write(bytes(1 << 20))
    (mnist / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(struct.pack(">II", 0x801, (1 << 30) // 784)))
    laughs = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))
    (work / "laughs.yaml").write_text(laughs)
    cases = [
        ("CIFAR batch with zero-stride arrays (1,000,000 images stated)", len(zero),
         ["train", "--quiet", "data.dataset=cifar10", "--data-dir", str(folder.parent)]),
        ("MNIST .gz inflating to 1 GiB", (mnist / "train-images-idx3-ubyte.gz").stat().st_size,
         ["train", "--quiet", "data.dataset=mnist", "--data-dir", str(mnist)]),
        ("YAML billion laughs (9^9 values)", len(laughs), ["train", str(work / "laughs.yaml")]),
    ]
    for what, size, argv in cases:
        start = time.perf_counter()
        result = run_lowbit(argv + ["--runs-dir", str(work / "repro-runs")], memory_limit=8 << 30)
        seconds = time.perf_counter() - start
        outcome = "refused" if result.rc == 2 and "Traceback" not in result.err else f"exit {result.rc}"
        rows.append((what, size, outcome, result.peak_rss_mb - baseline, seconds))
    return rows


def fuzz(work: Path, checkpoint: Path):
    cases = all_cases(14, str(checkpoint))
    baseline = run_lowbit(["report", str(work / "no-such-run")]).peak_rss_mb  # a child that reads nothing
    counts: dict = {}
    peak = 0.0
    for i, case in enumerate(cases):
        result, problem = run_case(case, work / f"fuzz{i:03d}", baseline)
        group = "malformed configs and overrides" if case.kind == "override" else "hostile files"
        sandbox = work / f"fuzz{i:03d}"
        made = (sandbox / "runs").is_dir() and any((sandbox / "runs").iterdir())
        refused = "refused after its run directory was made" if made else "refused before any folder was made"
        outcome = "failed: " + problem.splitlines()[0] if problem else (
            refused if result.rc == 2 else "ran correctly" if result.rc == 0 else "stopped cleanly (diverged)")
        counts.setdefault(group, {}).setdefault(outcome, 0)
        counts[group][outcome] += 1
        if case.kind != "override":
            peak = max(peak, result.peak_rss_mb - baseline)
    return len(cases), counts, peak


def main_(args) -> None:
    torch.set_num_threads(1)
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    rng = random.Random(14)
    work = Path(tempfile.mkdtemp(prefix="lowbit-reliability-"))
    probe_file = work / "probe.yaml"
    probe_file.write_text(yaml.safe_dump(PROBE))
    with redirect_stdout(StringIO()), redirect_stderr(StringIO()):  # warm this process: children start fast
        main(TRAIN + ["--runs-dir", str(work / "warm")])
        main(["probe", str(probe_file), "--quiet", "--runs-dir", str(work / "warm")])
        main(["train", "--quiet", *TRAIN_BASE, "--runs-dir", str(work / "source")])
    checkpoint = only_run(work / "source") / "checkpoints" / "last.pt"

    refs = {}
    for name, argv in {"train": TRAIN, "probe": ["probe", str(probe_file), "--quiet"],
                       "analyze": ["analyze", "weights", "--quiet", "train={}", f"checkpoints={{a: {checkpoint.parent.parent}}}",
                                   "layers=[conv1, fc1]"]}.items():
        root = work / f"ref-{name}"
        result = run_lowbit(argv + ["--runs-dir", str(root)], Fault("count", 0, root))
        assert result.rc == 0, result.err
        refs[name] = (argv, only_run(root), result.writes)
    equal = {
        "train": lambda run: same_train(run, refs["train"][1]),
        "probe": lambda run: probe_outcome(run) == probe_outcome(refs["probe"][1]),
        "analyze": lambda run: read_records(run / "weights.csv") == read_records(refs["analyze"][1] / "weights.csv"),
    }
    resume = {"train": ["train", "--quiet", "--resume"], "probe": ["probe", "--quiet", "--resume"],
              "analyze": ["analyze", "weights", "--quiet", "--resume"]}
    start = time.perf_counter()
    if args.fuzz_only:
        total, counts, peak = fuzz(work, checkpoint)
        print(counts, peak)
        return
    print(f"Machine: {cpu_name()}; load average {os.getloadavg()[0]:.1f} at the start (shared machine)\n")
    print("| command | fault | writes of an undisturbed run | faults injected | survived | of them before the run existed |")
    print("|:---|:---|---:|---:|---:|---:|")
    for name in ("probe", "analyze", "train"):
        argv, _, writes = refs[name]
        ks = range(1, writes + 1) if name != "train" else sorted(rng.sample(range(1, writes + 1), min(args.train_writes, writes)))
        for kind, injected, survived, early in faults_at_writes(work, name, argv, resume[name], equal[name], ks):
            label = "disk full (ENOSPC)" if kind == "enospc" else "SIGKILL mid-write"
            print(f"| {name} | {label} | {writes} | {injected} | {survived} | {early} |")
    print()
    print("| command | signal at a random moment | injected | survived |")
    print("|:---|:---|---:|---:|")
    for name, seconds in (("train", 1.5), ("probe", 1.0)):
        argv = refs[name][0]
        for signame, injected, survived in signals(work, name, argv, resume[name], equal[name], args.signals, seconds, rng):
            print(f"| {name} | {signame} | {injected} | {survived} |")
    rounds, errors, duplicates = concurrency(work)
    print(f"\ncreate_run_dir from 6 processes at one instant, {rounds} rounds: {errors} errors, {duplicates} shared folders")
    rounds, exclusive, rows_right = two_resumes(work)
    print(f"\ntwo `train --resume` of one run started together, {rounds} rounds: one ran and one refused in {exclusive}, "
          f"metrics.csv with exactly 2 rows (2 epochs) in {rows_right}")
    print("\n| hostile file of the issue | bytes | outcome | peak memory added (MB) | seconds |")
    print("|:---|---:|:---|---:|---:|")
    for what, size, outcome, peak_mb, seconds in issue_repros(work):
        print(f"| {what} | {size:,} | {outcome} | {peak_mb:.0f} | {seconds:.2f} |")
    total, counts, peak = fuzz(work, checkpoint)
    print(f"\nFuzz suite (seed 14): {total} cases")
    print("| inputs | outcome | cases |")
    print("|:---|:---|---:|")
    for group, outcomes in counts.items():
        for outcome, n in sorted(outcomes.items()):
            print(f"| {group} | {outcome} | {n} |")
    print(f"\nPeak memory any hostile file added to the process: {peak:.0f} MB")
    print(f"\n({time.perf_counter() - start:.0f} s; load average {os.getloadavg()[0]:.1f} at the end)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--signals", type=int, default=10, help="runs per signal and command")
    parser.add_argument("--train-writes", type=int, default=40, help="write numbers sampled for training faults")
    parser.add_argument("--fuzz-only", action="store_true", help="only the fuzz counts (a quick look)")
    main_(parser.parse_args())
