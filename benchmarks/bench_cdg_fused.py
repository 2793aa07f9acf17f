"""Where the time of the toy's first-layer CDG goes, before deciding on a fused compare-and-accumulate kernel.

    python benchmarks/bench_cdg_fused.py                 # dim 64, batch 16000, float32, 1 thread
    python benchmarks/bench_cdg_fused.py --dim 32

The first-layer fast path (``ToyObjective._sign_first_layer``) computes, for
one signed step s and every weight W_0[i, j],

    ΔL(i, j) = (1/B) Σ_n D[n, i] (1 − 2q_ni) · 1{x_nj < t_ni}  +  const_i,

by writing the comparison 1{x_nj < t_ni} as a float mask of shape
(d_i, chunk, d_j) and contracting it with the weights by a batched GEMV
(``torch.bmm``). A fused kernel would do the comparison and the accumulation
in registers, never writing the B·d² mask. This script times, side by side,
best of ``--repeat`` in process CPU time (``time.process_time``) with one
torch thread:

- one loss evaluation (the unit the probe's costs are given in);
- the whole first-layer pass for one step, as CDG runs it;
- its two parts on the same chunks: the comparison into the mask alone,
  and the GEMV alone on a ready mask;
- a streaming pass that reads the inputs and writes nothing of size B·d²
  (``(x_n · t_n)`` summed per chunk by ``torch.baddbmm`` of the same
  shapes as the accumulation): the memory-traffic floor a fused kernel would
  have, measured with the same library.

The decision this informs is recorded in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from lowbit.probe.toy import MASK_NUMBERS, ToyTask


def best_cpu(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return best


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            lines = f.read().splitlines()
        model = next(l.split(":", 1)[1].strip() for l in lines if l.startswith("model name"))
        flags = set(next(l.split(":", 1)[1].split() for l in lines if l.startswith("flags")))
        wanted = [f for f in ("avx2", "avx512f", "avx512_bf16", "avx512_vpopcntdq", "amx_tile") if f in flags]
        return f"{model} ({', '.join(wanted) or 'no AVX2'})"
    except (OSError, StopIteration):
        return platform.processor() or "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    task = ToyTask(args.dim, depth=3, act="ste", batch_size=args.batch, seed=0)
    objective = task.objective(layers=[0])
    d, batch = args.dim, args.batch
    ws = objective._merged(None)
    with torch.no_grad():
        us, zs = objective._cache(ws)
        residual = zs[-1] - objective.y
        row_loss = residual.square().mean(dim=-1)
        levels = objective.activation.level_values(objective.dtype)
        _, changes = objective._level_changes(ws, us, zs, residual, row_loss, 0, levels)
    z, x, change = zs[0], us[0], changes[0]
    s = 0.1
    t = -z / s
    signed = torch.where(z < 0, -change, change).to(torch.float32)
    rows = max(1, MASK_NUMBERS // (d * d))
    chunks = [(n0, min(rows, batch - n0)) for n0 in range(0, batch, rows)]
    masks = [torch.empty(d, c, d) for _, c in chunks]

    one_loss = best_cpu(lambda: objective.losses({k: v.unsqueeze(0) for k, v in objective.params.items()}), args.repeat)
    whole = best_cpu(lambda: objective._sign_first_layer(z, x, change, s), args.repeat)

    def compare_only():
        for (n0, c), mask in zip(chunks, masks):
            torch.lt(x[n0 : n0 + c][None, :, :], t[n0 : n0 + c].T[:, :, None], out=mask)

    def gemv_only():
        for (n0, c), mask in zip(chunks, masks):
            torch.bmm(signed[n0 : n0 + c].T[:, None, :], mask)

    def stream_floor():  # reads x and t per chunk, accumulates (d_i, d_j) outputs, writes no B·d² buffer
        acc = torch.zeros(d, 1, d)
        for n0, c in chunks:
            torch.baddbmm(acc, t[n0 : n0 + c].T[:, None, :], x[n0 : n0 + c][None, :, :].expand(d, c, d), out=acc)

    compare = best_cpu(compare_only, args.repeat)
    gemv = best_cpu(gemv_only, args.repeat)
    floor = best_cpu(stream_floor, args.repeat)
    elements = batch * d * d
    load = os.getloadavg()
    print(f"CPU: {cpu_model()}; torch {torch.__version__}, 1 thread; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} "
          "(a shared machine: the figures are process CPU time, best of "
          f"{args.repeat})")
    print(f"dim {d}, batch {batch}: B·d² = {elements / 1e6:.1f} M comparisons per step; chunks of {rows} samples")
    print()
    print("| what | ms | = loss evals | G elements/s |")
    print("|:--|--:|--:|--:|")
    for name, seconds in (
        ("one loss evaluation", one_loss),
        ("first-layer pass, one step (as CDG runs it)", whole),
        ("  of which: comparison into the float mask", compare),
        ("  of which: batched GEMV on the mask", gemv),
        ("streaming floor (no B·d² buffer written)", floor),
    ):
        rate = "" if name == "one loss evaluation" else f"{elements / seconds / 1e9:.2f}"
        print(f"| {name} | {seconds * 1e3:.1f} | {seconds / one_loss:.2f} | {rate} |")
    print()
    print(f"CDG (central) = 2 steps: {2 * whole * 1e3:.0f} ms = {2 * whole / one_loss:.1f} loss evaluations; "
          f"a fused pass at the streaming floor: {2 * floor * 1e3:.0f} ms = {2 * floor / one_loss:.1f}")


if __name__ == "__main__":
    main()
