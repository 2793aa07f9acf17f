"""Training throughput on this machine: images/s of a full training step, per model.

A step is what ``lowbit.train.loop`` does per batch: BatchAugment (crop + flip +
normalise) on uint8 images, forward, cross-entropy, backward, SGD step. The
binary model's step time is compared with its float twin: xnor_resnet18 at width
16 against the same network with plain float convs in place of the binary ones
(``lowbit.deploy.twin.float_twin``; resnet18 is a different network, kept as a
row of its own). Target <= 1.15x (issue 15): binarisation should cost little on
top of the convolutions. ``benchmarks/bench_binary_train.py`` measures the same
ratio at widths 16-64 with process CPU time.

    python benchmarks/bench_train.py                 # print the table, update BENCHMARKS.md
    python benchmarks/bench_train.py --no-write --steps 5
    python benchmarks/bench_train.py --threads 1     # on a CPU shared with other jobs

Each figure is the median over ``--steps`` timed steps after 2 warm-up steps.
On a CPU shared with other jobs the figures are inflated; the run says so
(load average) in the BENCHMARKS.md section.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import statistics
import time
from pathlib import Path
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F

from lowbit.data import BatchAugment
from lowbit.deploy.twin import float_twin
from lowbit.models import create_model
from lowbit.runs import cpu_name

ROOT = Path(__file__).resolve().parents[1]
SECTION = "Training throughput"
START, END = "<!-- bench_train:start -->", "<!-- bench_train:end -->"

TARGET = 1.15  # xnor_resnet18 step time / its float twin's
TWIN = "twin:"  # model-name prefix: the float twin of that zoo model

# (label, model name, kwargs, (channels, size), batch); the ratio is CASES[1] / CASES[0]
CASES: List[Tuple[str, str, Dict, Tuple[int, int], int]] = [
    ("xnor_resnet18 w16 float twin, CIFAR 32x32", TWIN + "xnor_resnet18", {"width": 16}, (3, 32), 128),
    ("xnor_resnet18 w16, CIFAR 32x32", "xnor_resnet18", {"width": 16}, (3, 32), 128),
    ("resnet18 w16, CIFAR 32x32", "resnet18", {"width": 16}, (3, 32), 128),
    ("resnet9 (w 1.0), CIFAR 32x32", "resnet9", {}, (3, 32), 128),
    ("simp_resnet9 (w 1.0), CIFAR 32x32", "simp_resnet9", {}, (3, 32), 128),
    ("digits: lenet5, 32x32 (train-digits.yaml)", "lenet5", {}, (1, 32), 64),
    ("digits: resnet9 w0.25, 8x8", "resnet9", {"width_mult": 0.25}, (1, 8), 64),
    ("digits: xnor_resnet18 w32, 8x8 (train-digits-xnor.yaml)", "xnor_resnet18", {"width": 32}, (1, 8), 64),
]


def time_steps(name: str, kwargs: Dict, shape: Tuple[int, int], batch: int, steps: int) -> float:
    """Median seconds of one training step."""
    channels, size = shape
    torch.manual_seed(0)
    if name.startswith(TWIN):
        model = float_twin(create_model(name[len(TWIN):], num_classes=10, in_channels=channels, **kwargs))
    else:
        model = create_model(name, num_classes=10, in_channels=channels, **kwargs)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    augment = BatchAugment(crop_padding=max(1, size // 8), flip=True, mean=(0.5,) * channels, std=(0.25,) * channels)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, channels, size, size), dtype=torch.uint8, generator=g)  # (B, C, S, S)
    labels = torch.randint(0, 10, (batch,), generator=g)
    times = []
    for i in range(steps + 2):  # 2 warm-up steps: allocator and oneDNN primitive caches
        t0 = time.perf_counter()
        x = augment(images, generator=g)
        loss = F.cross_entropy(model(x), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per model (default 10)")
    parser.add_argument("--no-write", action="store_true", help="print only; do not update BENCHMARKS.md")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, all cores)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    load_before = os.getloadavg()[0]
    rows = []
    step_time: Dict[str, float] = {}
    for label, name, kwargs, shape, batch in CASES:
        seconds = time_steps(name, kwargs, shape, batch, args.steps)
        step_time[label] = seconds
        rows.append((label, batch, seconds * 1000, batch / seconds))
        print(f"{label:<58} batch {batch:>4}  {seconds * 1000:9.1f} ms/step  {batch / seconds:9.1f} images/s", flush=True)
    load_after = os.getloadavg()[0]
    ratio = step_time[CASES[1][0]] / step_time[CASES[0][0]]
    verdict = "meets" if ratio <= TARGET else "misses"
    print(f"xnor_resnet18 w16 / its float twin step time: {ratio:.2f}x ({verdict} the <= {TARGET}x target)")

    cores = os.cpu_count() or 1
    shared = max(load_before, load_after) > cores
    table = ["| model, input | batch | ms / step | images / s |", "|---|---:|---:|---:|"]
    table += [f"| {label} | {batch} | {ms:.1f} | {ips:.1f} |" for label, batch, ms, ips in rows]
    section = "\n".join(
        [
            START,
            f"## {SECTION}",
            "",
            "`python benchmarks/bench_train.py`: one full training step (BatchAugment crop+flip+normalise, forward,",
            "cross-entropy, backward, SGD momentum step) on random uint8 images; median of "
            f"{args.steps} steps after 2 warm-up steps.",
            "",
            *table,
            "",
            f"Binary vs float twin (xnor_resnet18 w16 / the same network with plain convs, same batch): "
            f"**{ratio:.2f}x** step time ({verdict} the <= {TARGET}x target). resnet18 is a different network "
            "(other blocks), not the twin. The rows are timed one case after another in wall-clock time, so a load "
            "change between two rows moves this ratio; the interleaved process-CPU comparison at widths 16-64 is in "
            "\"Binary layers in training\" (benchmarks/bench_binary_train.py).",
            "",
            f"Machine: {cpu_name()}, {torch.get_num_threads()} torch threads; torch {torch.__version__}, "
            f"Python {platform.python_version()}; {dt.date.today().isoformat()}."
            + (
                f" **CPU shared with concurrent jobs** (load average {load_before:.1f} before, {load_after:.1f} after, "
                f"on {cores} cores): figures are inflated, the ratio less so."
                if shared
                else f" Load average {load_before:.1f} / {load_after:.1f} on {cores} cores."
            ),
            END,
        ]
    )
    if args.no_write:
        return
    path = ROOT / "BENCHMARKS.md"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)
    print(f"updated {path}")


if __name__ == "__main__":
    main()
