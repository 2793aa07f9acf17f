"""Shared measurement helpers of the bench_binary_* scripts (not a benchmark itself).

Protocol (BENCHMARKS.md): 1 torch thread, process CPU time (``time.process_time``),
best of N rounds with the variants interleaved inside each round (side by side,
so a load spike hits all of them), the CPU named with the flags that matter, and
the 1-minute load average before and after printed with the table.
"""

from __future__ import annotations

import os
import platform
import re
import time
from pathlib import Path
from typing import Callable, Dict

import torch

from lowbit.runs import cpu_name

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ("avx2", "avx512f", "avx512_vpopcntdq", "avx512bw", "popcnt")


def cpu_flags() -> str:
    """The CPU flags that decide the kernels, from /proc/cpuinfo."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.machine()
    line = next((l for l in text.splitlines() if l.startswith("flags")), "")
    have = set(line.split(":", 1)[-1].split())
    return ", ".join(f for f in FLAGS if f in have) or "none of " + ", ".join(FLAGS)


def machine_line(load_before: float, load_after: float) -> str:
    cores = os.cpu_count() or 1
    shared = max(load_before, load_after) > 1.0
    note = (
        f"**shared machine**: 1-min load average {load_before:.1f} before / {load_after:.1f} after on {cores} cores "
        "(other engineers' jobs); the variants are interleaved in every round, so ratios suffer less than absolute times"
        if shared
        else f"load average {load_before:.1f} / {load_after:.1f} on {cores} cores"
    )
    return (
        f"{cpu_name()} [{cpu_flags()}]; torch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()}), "
        f"{torch.get_num_threads()} thread; {note}."
    )


def load() -> float:
    return os.getloadavg()[0]


def best_times(variants: Dict[str, Callable[[], object]], rounds: int, warmup: int = 1) -> Dict[str, float]:
    """Best process-CPU seconds of each variant over ``rounds`` interleaved rounds."""
    for _ in range(warmup):
        for fn in variants.values():
            fn()
    best = {name: float("inf") for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            t0 = time.process_time()
            fn()
            best[name] = min(best[name], time.process_time() - t0)
    return best


def write_section(start: str, end: str, text: str, path: Path = ROOT / "BENCHMARKS.md") -> None:
    """Replace the text between the markers ``start`` and ``end`` (appended if absent)."""
    section = f"{start}\n{text.strip()}\n{end}"
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    new = pattern.sub(lambda _: section, old) if pattern.search(old) else old.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(new)
    print(f"updated {path}")


def publish(text: str, start: str, end: str, write: bool) -> None:
    """Print a benchmark's Markdown section and, unless ``write`` is False, put it into BENCHMARKS.md."""
    print(text)
    if write:
        write_section(start, end, text)
