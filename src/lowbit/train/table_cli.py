"""``lowbit table RUN_DIR ...``: the notes' table over training runs, sorted by the keys that differ.

    lowbit table runs/xnor-w*                          # Markdown on stdout; label keys found automatically
    lowbit table runs/sweep-xnor-20260101-120000       # a sweep (its cells/) or any folder of run directories
    lowbit table runs/a runs/b --keys model.width,optim.weight_decay --out results/xnor   # + .csv and .md

A RUN_DIR with ``metrics.csv`` is one run; any other folder stands for the
training runs inside it (``cells/`` of a sweep included) that have finished an
epoch. The table is :func:`lowbit.train.sweep_table`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Sequence, Tuple


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                        help="training run directories, or folders holding them (a sweep directory, runs/)")
    parser.add_argument("--keys", default=None, metavar="K1,K2",
                        help="dotted config keys that label and sort the rows (default: the keys whose values differ)")
    parser.add_argument("--out", default=None, metavar="PREFIX", help="also write PREFIX.csv and PREFIX.md")
    parser.add_argument("--format", choices=("markdown", "csv"), default="markdown", help="what to print (default: markdown)")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")


def collect_runs(paths: Sequence[str]) -> Tuple[List[Path], List[Path]]:
    """``(training run directories, folders skipped as unfinished)`` named by the command line's paths."""
    runs: List[Path] = []
    skipped: List[Path] = []
    for name in paths:
        path = Path(name)
        if (path / "metrics.csv").is_file():
            runs.append(path)
        elif (path / "config.yaml").is_file():
            raise FileNotFoundError(f"{name!r} has no metrics.csv: no epoch has finished, or it is not a `lowbit train` run")
        elif path.is_dir():
            children = sorted(p for folder in (path, path / "cells") if folder.is_dir() for p in folder.iterdir() if p.is_dir())
            found = [p for p in children if (p / "metrics.csv").is_file()]
            skipped += [p for p in children if (p / "config.yaml").is_file() and p not in found and not (p / "records.csv").exists()]
            if not found:
                raise FileNotFoundError(f"{name!r} holds no training run with a finished epoch (no */metrics.csv)")
            runs += found
        else:
            raise FileNotFoundError(f"{name!r}: no such directory")
    return list(dict.fromkeys(runs)), skipped


def run(args: argparse.Namespace) -> int:
    from lowbit.config import flatten_dotted
    from lowbit.registry import nearest
    from lowbit.train.summary import run_summary, sweep_table

    runs, skipped = collect_runs(args.run_dirs)
    keys = [k.strip() for k in args.keys.split(",") if k.strip()] if args.keys else None
    if keys:
        known = set().union(*(flatten_dotted(run_summary(r)["config"]) for r in runs))
        unknown = [k for k in keys if k not in known]
        if unknown:
            hints = "; ".join(f"{k!r}" + (f" (did you mean {nearest(k, known)!r}?)" if nearest(k, known) else "") for k in unknown)
            raise ValueError(f"--keys: no run's config.yaml has {hints}")
    table = sweep_table(runs, keys)
    if skipped:
        print(f"lowbit table: skipped {len(skipped)} run(s) without a finished epoch: "
              + ", ".join(str(p) for p in skipped), file=sys.stderr)
    print(table.csv() if args.format == "csv" else table.markdown(), end="" if args.format == "csv" else "\n")
    if args.out:
        written = table.write(args.out)
        print(f"lowbit table: wrote {', '.join(str(p) for p in written)}", file=sys.stderr)
    return 0
