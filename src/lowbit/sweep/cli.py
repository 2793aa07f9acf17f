"""``lowbit sweep SPEC.yaml [key=value ...]`` and ``lowbit sweep --resume SWEEP_DIR``.

    lowbit sweep configs/sweep-xnor-width-wd-digits.yaml                 # local worker processes
    lowbit sweep configs/sweep-xnor-width-wd-digits.yaml --workers 1 run.epochs=2
    lowbit sweep configs/sweep-xnor-width-wd-cifar10.yaml --executor ray --address auto
    lowbit sweep --resume runs/sweep-xnor-width-wd-digits-20261201-101500

``key=value`` applies to every cell's config, except ``grid.KEY=[...]``,
``zip.KEY=[...]`` and ``seeds=[...]``, which change the spec's grid. Exit code
0 when every cell finished, 1 when some failed (the report says which), 130
when interrupted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", nargs="?", help="the sweep spec (configs/sweep-*.yaml or a built-in name such as xnor-width-wd-digits)")
    parser.add_argument("overrides", nargs="*", help="key=value for every cell; grid.KEY=[..], zip.KEY=[..], seeds=[..] for the grid")
    parser.add_argument("--resume", metavar="SWEEP_DIR", help="run the cells of a sweep that are not done")
    parser.add_argument("--executor", choices=["local", "ray"], help="override the spec's executor")
    parser.add_argument("--workers", type=int, help="local: worker processes (default: CPU cores); ray, no --address: CPUs of the local instance")
    parser.add_argument("--address", help="ray: join this running cluster (e.g. auto or HEAD:6379) instead of a local instance")
    parser.add_argument("--runs-dir", default="runs", help="where the sweep directory is created (default: runs)")
    parser.add_argument("--dry-run", action="store_true", help="validate every cell and list them; run nothing")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")


def run(args: argparse.Namespace) -> int:
    from lowbit.cli_args import record_imports
    from lowbit.config import find_config
    from lowbit.sweep.driver import SweepInterrupted, load_sweep_spec, plan_sweep, run_sweep
    from lowbit.sweep.state import FAILED, read_cells

    common = dict(executor=args.executor, workers=args.workers, address=args.address, progress=not args.quiet)
    if args.resume:
        if args.spec or args.overrides:
            raise ValueError("--resume runs a sweep with its own sweep.yaml: give no spec or overrides with it")
        if args.dry_run:
            raise ValueError("--dry-run validates a new spec; it does not combine with --resume")
        call = dict(resume=args.resume)
    else:
        if not args.spec:
            raise ValueError("give a sweep spec (configs/sweep-*.yaml) or --resume SWEEP_DIR")
        spec_path = find_config(args.spec, ("sweep-",))
        spec = record_imports(load_sweep_spec(spec_path, args.overrides), args.imports)
        if args.dry_run:
            _, base_file, _, cells = plan_sweep(spec, spec_path.parent)
            print(f"{len(cells)} cells of `lowbit {spec.command}` on {base_file or 'the built-in default'}, all valid:")
            for cell in cells:
                print(f"  {cell.id}  {cell.label}")
            return 0
        call = dict(spec=spec, spec_dir=spec_path.parent, runs_dir=args.runs_dir)
    try:
        sweep_dir = run_sweep(**call, **common)
    except SweepInterrupted as stop:
        print(f"lowbit sweep: interrupted; finished cells are kept. Run the rest with: lowbit sweep --resume {stop.sweep_dir}",
              file=sys.stderr)
        return 130
    failed = [s for s in read_cells(sweep_dir) if s.status == FAILED]
    print(f"sweep directory: {sweep_dir}  (report: {Path(sweep_dir) / 'report.md'})")
    if failed:
        print(f"lowbit sweep: {len(failed)} cell(s) failed: {', '.join(s.cell for s in failed)}; see the report", file=sys.stderr)
        return 1
    return 0
