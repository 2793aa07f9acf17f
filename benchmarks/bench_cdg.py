"""CDG on the teacher–student toy: the flip-only fast path vs the naive two-evaluations-per-coordinate loop.

    python benchmarks/bench_cdg.py            # dim 64, batch 16000, every layer, float32 and float64
    python benchmarks/bench_cdg.py --full     # time the naive loop on every coordinate (minutes)

The naive reference moves one coordinate at a time and evaluates the full loss
twice (central difference): 2·d² loss evaluations per layer. Its cost per
coordinate is constant, so by default it is timed on ``--naive-coords``
random coordinates and scaled to all d²; the fast path always computes every
coordinate. Both are best of ``--repeat`` runs (the CPU may be shared). As a
spike in the machine's load inflates a long naive run, the naive time used for
the speed-up is the smaller of the scaled measurement and 2·d² × (one loss
evaluation, best of 20): a conservative ratio. "= loss evals" is the fast
path's time in units of one loss evaluation (the naive loop needs 2·d²).

Errors are ‖a − b‖ / ‖b‖ on the timed coordinates. "exact" is the fast path
run in float64 on the same data (the float64 rows show that it equals the
naive float64 loop). In float32 the naive loop is the less accurate one: it
subtracts two rounded losses, L(w + εe) − L(w − εe), while the fast path sums
the per-sample changes directly.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from lowbit.estimators import get_estimator
from lowbit.probe.toy import ToyObjective, ToyTask, layer_name


def best_of(fn, repeat):
    times = []
    result = None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def machine() -> str:
    model = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{model}, {os.cpu_count()} logical CPUs, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), load average {load:.1f}")


def naive_cdg(objective, name, coords, eps):
    """Central differences, one coordinate at a time, two full loss evaluations each."""
    params = dict(objective.params)
    w = params[name]
    out = torch.empty(len(coords), dtype=torch.float64)
    with torch.no_grad():
        for k, (i, j) in enumerate(coords):
            plus, minus = w.clone(), w.clone()
            plus[i, j] += eps
            minus[i, j] -= eps
            out[k] = (float(objective.loss({**params, name: plus})) - float(objective.loss({**params, name: minus}))) / (2 * eps)
    return out


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16000)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--act", default="ste")
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--layers", type=int, nargs="+", default=None)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float64"])
    parser.add_argument("--naive-coords", type=int, default=256)
    parser.add_argument("--full", action="store_true", help="time the naive loop on every coordinate")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    layers = args.layers if args.layers is not None else list(range(args.depth))
    print(f"# CDG fast path vs naive loop — {machine()}")
    print(f"# dim={args.dim} batch={args.batch} depth={args.depth} act={args.act} eps={args.eps} (central), best of {args.repeat}")
    print("| dtype | layer | 1 loss (s) | naive (s) | fast (s) | = loss evals | speed-up | fast vs naive | fast vs exact | naive vs exact |")
    print("|:--|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    cdg = get_estimator("cdg", eps=args.eps)
    for dtype_name in args.dtypes:
        dtype = getattr(torch, dtype_name)
        task = ToyTask(args.dim, depth=args.depth, act=args.act, batch_size=args.batch, seed=0, dtype=dtype)
        for layer in layers:
            objective = task.objective(layers=[layer])
            name = layer_name(layer)
            fast_s, fast = best_of(lambda: cdg.estimate(objective), args.repeat)
            n = args.dim * args.dim
            g = torch.Generator().manual_seed(layer)
            chosen = torch.arange(n) if args.full else torch.randperm(n, generator=g)[: min(n, args.naive_coords)]
            coords = [(int(c) // args.dim, int(c) % args.dim) for c in chosen]
            naive_s, naive = best_of(lambda: naive_cdg(objective, name, coords, args.eps), 1 if args.full else args.repeat)
            with torch.no_grad():
                one_s, _ = best_of(lambda: objective.loss(), 20)
            naive_total = min(naive_s * n / len(coords), 2 * n * one_s)
            exact_objective = ToyObjective(
                [w.double() for w in objective.weights], objective.activation, objective.x.double(), objective.y.double(), [layer]
            )
            exact = cdg.estimate(exact_objective)[name].reshape(-1)[chosen]
            ours = fast[name].reshape(-1)[chosen].double()
            print(f"| {dtype_name} | {layer} | {one_s:.4f} | {naive_total:.1f} | {fast_s:.3f} | {fast_s / one_s:.1f} | {naive_total / fast_s:.0f}× "
                  f"| {relative(ours, naive):.1e} | {relative(ours, exact):.1e} | {relative(naive, exact):.1e} |")


if __name__ == "__main__":
    main()
