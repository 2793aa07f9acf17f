"""The lr scan L(w − lr·d) for 10^4 lrs: ``objective.line_losses`` vs one loss evaluation per lr.

    python benchmarks/bench_lr_scan.py          # dim 64, batch 16000, lr = 1e-5..1e-1 step 1e-5

The direction is the notes' one: the STE gradient normalised to unit l2 norm.
Cases: first layer only / all layers, binary (sign) and full-precision
(``none``) students. The fast path's cost is also given in units of one loss
evaluation (the target: <= 100 for 10^4 lrs). The naive scan is timed on
``--naive-lrs`` evenly spaced lrs and scaled to the whole grid; the naive time
used for the speed-up is the smaller of that and 10^4 × (one loss evaluation,
best of 20), a conservative ratio when the machine's load spikes. Errors are
max |a − b| / L(w) over those lrs; "exact" is the fast path in float64 on the
same data (the float64 rows show it equals the naive float64 scan). In
float32 the naive scan's own rounding — (W − lr·D)x rounded differently from
a − lr·b, so a pre-activation within rounding of 0 can flip — dominates the
fast-vs-naive difference. Best of ``--repeat``.
"""

from __future__ import annotations

import argparse

import torch

from lowbit.estimators import get_estimator, norm_of

try:
    from bench_cdg import best_of, machine
except ImportError:  # run from another directory
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_cdg import best_of, machine

from lowbit.probe.toy import ToyObjective, ToyTask


def naive_scan(objective, direction, lrs):
    with torch.no_grad():
        return torch.tensor(
            [float(objective.loss({k: p - float(lr) * direction[k] for k, p in objective.params.items()})) for lr in lrs],
            dtype=torch.float64,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16000)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--naive-lrs", type=int, default=100)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float64"])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    lrs = torch.arange(1, 10001, dtype=torch.float64) * 1e-5  # the notes: [1e-5, 1e-1] step 1e-5
    sub = torch.linspace(0, len(lrs) - 1, args.naive_lrs).round().long()
    print(f"# lr scan, {len(lrs)} lrs — {machine()}")
    print(f"# dim={args.dim} batch={args.batch} depth={args.depth}, direction = STE gradient / ‖·‖₂, best of {args.repeat}")
    print("| act | layers | dtype | 1 loss (s) | naive scan (s) | fast scan (s) | = loss evals | speed-up "
          "| fast vs naive | fast vs exact | naive vs exact |")
    print("|:--|:--|:--|--:|--:|--:|--:|--:|--:|--:|--:|")
    for act in ("ste", "none"):
        for dtype_name in args.dtypes:
            task = ToyTask(args.dim, depth=args.depth, act=act, batch_size=args.batch, seed=0, dtype=getattr(torch, dtype_name))
            for layers in ([0], "all"):
                objective = task.objective(layers=layers)
                grad = get_estimator("ste").estimate(objective)
                length = norm_of(grad)
                direction = {k: v / length for k, v in grad.items()}
                with torch.no_grad():
                    one_s, base = best_of(lambda: float(objective.loss()), 20)
                fast_s, fast = best_of(lambda: objective.line_losses(direction, lrs), args.repeat)
                naive_s, naive = best_of(lambda: naive_scan(objective, direction, lrs[sub]), 1)
                naive_total = min(naive_s * len(lrs) / len(sub), len(lrs) * one_s)
                exact_objective = ToyObjective(
                    [w.double() for w in objective.weights], objective.activation, objective.x.double(), objective.y.double(),
                    objective.layers,
                )
                exact = exact_objective.line_losses({k: v.double() for k, v in direction.items()}, lrs[sub])
                err = lambda a, b: float((a - b).abs().max()) / base  # noqa: E731
                shown = "0" if layers != "all" else "all"
                print(f"| {act} | {shown} | {dtype_name} | {one_s:.4f} | {naive_total:.1f} | {fast_s:.3f} "
                      f"| {fast_s / one_s:.1f} | {naive_total / fast_s:.0f}× | {err(fast[sub], naive):.1e} "
                      f"| {err(fast[sub], exact):.1e} | {err(naive, exact):.1e} |")


if __name__ == "__main__":
    main()
