"""NES population evaluation on the toy: batched ``objective.losses`` vs one loss per member, vs matmul peak.

    python benchmarks/bench_nes.py                 # dims 8..64, batch 16000, 512 members
    python benchmarks/bench_nes.py --estimate      # also a full nes(population=5000) estimate at the largest dim

Every member is a perturbed first layer (the notes' setting) and is evaluated
through the whole network, so one member costs batch·d²·2·depth FLOPs. The
plain float32 matmul throughput of this machine (2048² @ 2048²) is measured in
the same run; "of peak" is the batched path's useful FLOP/s over it. The
per-member loop is the obvious implementation (``objective.loss`` per member,
no autograd); it is timed on ``--loop-members`` members and scaled, and never
counted slower than that many single loss evaluations (best of 20). The
"tight loop" is the same loop with the fast path's sign (``lowbit.quant``'s
``hard_sign`` uses ``torch.where``, several times slower on CPU), so that the
batching itself is measured. All
timings are best of ``--repeat`` (the CPU may be shared).
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from lowbit.estimators import get_estimator
from lowbit.probe.toy import ToyTask

try:
    from bench_cdg import best_of, machine
except ImportError:  # run from another directory
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_cdg import best_of, machine


def matmul_gflops(repeat: int, n: int = 2048) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    seconds, _ = best_of(lambda: a @ b, repeat + 2)
    return 2 * n**3 / seconds / 1e9


def member_loop(objective, stacked, members):
    with torch.no_grad():
        return [float(objective.loss({k: v[i] for k, v in stacked.items()})) for i in range(members)]


def tight_loop(objective, stacked, members):
    """The per-member loop with the fast path's own sign (a float comparison, not torch.where)."""
    act = objective.activation
    out = []
    with torch.no_grad():
        for i in range(members):
            h = objective.x
            weights = objective._merged({k: v[i] for k, v in stacked.items()})
            for l, w in enumerate(weights):
                h = F.linear(h, w)
                if l < len(weights) - 1:
                    h = act.fast_(h)
            out.append(float(F.mse_loss(h, objective.y)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--batch", type=int, default=16000)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--pop", type=int, default=512)
    parser.add_argument("--loop-members", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--estimate", action="store_true", help="time nes(population=5000).estimate at the largest dim")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    peak = matmul_gflops(args.repeat)
    print(f"# NES population evaluation — {machine()}")
    print(f"# float32 matmul 2048x2048: {peak:.1f} GFLOP/s; batch={args.batch} depth={args.depth} pop={args.pop}, best of {args.repeat}")
    print("| dim | loop (s/member) | loop GFLOP/s | tight loop GFLOP/s | batched (s/member) | batched GFLOP/s | of peak "
          "| speed-up vs loop | vs tight loop |")
    print("|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for dim in args.dims:
        task = ToyTask(dim, depth=args.depth, act="ste", batch_size=args.batch, seed=0)
        objective = task.objective(layers=[0])
        g = torch.Generator().manual_seed(dim)
        stacked = {k: v[None] + 0.1 * torch.randn(args.pop, *v.shape, generator=g) for k, v in objective.params.items()}
        flops = args.batch * dim * dim * 2 * args.depth  # per member
        batched_s, values = best_of(lambda: objective.losses(stacked), args.repeat)
        loop_n = min(args.pop, args.loop_members)
        loop_s, reference = best_of(lambda: member_loop(objective, stacked, loop_n), args.repeat)
        with torch.no_grad():  # one member = one loss evaluation: a contention-robust floor for the loop
            one_s, _ = best_of(lambda: objective.loss({k: v[0] for k, v in stacked.items()}), 20)
        loop_s = min(loop_s, one_s * loop_n)
        tight_s, _ = best_of(lambda: tight_loop(objective, stacked, loop_n), args.repeat)
        error = max(abs(float(values[i]) - reference[i]) / abs(reference[i]) for i in range(loop_n))
        assert error < 1e-4, f"batched and loop losses disagree: {error}"
        per_b, per_l, per_t = batched_s / args.pop, loop_s / loop_n, tight_s / loop_n
        print(f"| {dim} | {per_l * 1e3:.3f}e-3 | {flops / per_l / 1e9:.1f} | {flops / per_t / 1e9:.1f} | {per_b * 1e3:.3f}e-3 "
              f"| {flops / per_b / 1e9:.1f} | {flops / per_b / 1e9 / peak:.0%} | {per_l / per_b:.1f}× | {per_t / per_b:.1f}× |")
    if args.estimate:
        dim = max(args.dims)
        objective = ToyTask(dim, depth=args.depth, act="ste", batch_size=args.batch, seed=0).objective(layers=[0])
        nes = get_estimator("nes", population=5000, sigma=0.1)
        seconds, _ = best_of(lambda: nes.estimate(objective, torch.Generator().manual_seed(0)), 1)
        print(f"\nnes(population=5000, sigma=0.1).estimate at dim {dim}, batch {args.batch}: {seconds:.1f} s")


if __name__ == "__main__":
    main()
