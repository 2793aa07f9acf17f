"""CDG on a real network: GraphObjective vs the naive one-forward-per-coordinate loop.

    python benchmarks/bench_cdg_network.py                # xnor_resnet18(width=8), digits 32x32, batch 128
    python benchmarks/bench_cdg_network.py --eps 0.1 --layers layer1.0.conv1

For each layer, CDG (central, ±eps) on ``--coords`` random coordinates of the
layer's weight: the naive reference evaluates the whole network twice per
coordinate with ``torch.func.functional_call`` (the plain way to write it);
the fast path is :class:`lowbit.estimators.GraphObjective` (prefix cached,
population folded into the batch, exact pruning of members whose sign
activations did not change), with pruning on and off. Both run on the same
coordinates, so the cost per coordinate and the results compare directly;
"max |diff|" is the largest difference of the two CDG estimates (float32).
Times are best of ``--repeat``; "pruned" is the share of the ±eps evaluations
that stopped early.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from lowbit.estimators import GraphObjective, subset_coordinate_deltas
from lowbit.probe.network import NetworkConfig, NetworkTask, studied_weight

try:
    from bench_cdg import best_of, machine
except ImportError:  # run from another directory
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_cdg import best_of, machine


def naive_cdg(model, batch, name, coords, eps):
    """Two full forward passes per coordinate."""
    x, y = batch
    w = dict(model.named_parameters())[name].detach()
    out = torch.empty(len(coords), dtype=torch.float64)
    with torch.no_grad():
        for k, i in enumerate(coords.tolist()):
            losses = []
            for s in (eps, -eps):
                moved = w.clone().reshape(-1)
                moved[i] += s
                logits = torch.func.functional_call(model, {name: moved.reshape(w.shape)}, (x,))
                losses.append(float(F.cross_entropy(logits, y)))
            out[k] = (losses[0] - losses[1]) / (2 * eps)
    return out


def fast_cdg(objective, coords, eps):
    deltas = subset_coordinate_deltas(objective, (eps, -eps), coords)
    return (deltas[0] - deltas[1]) / (2 * eps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--eps", type=float, default=0.01)
    parser.add_argument("--coords", type=int, default=48, help="random coordinates per layer, the same for both paths")
    parser.add_argument("--layers", nargs="+", default=["layer1.0.conv1", "layer1.0.conv2", "layer2.0.conv1", "layer3.0.conv1", "layer4.0.conv1", "layer4.1.conv2"])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    task = NetworkTask(NetworkConfig(model={"name": "xnor_resnet18", "width": args.width}, image_size=args.image_size, batch_size=args.batch))
    batch = task.batch(0)
    print(f"# CDG per coordinate on xnor_resnet18(width={args.width}), digits {args.image_size}x{args.image_size}, "
          f"batch {args.batch}, eps {args.eps} (central), {args.coords} random coordinates per layer, best of {args.repeat}")
    print(f"# {machine()}")
    print("| layer | coordinates | naive (ms/coord) | fast, no pruning (ms/coord) | fast (ms/coord) | pruned | speed-up | max abs diff |")
    print("|:--|--:|--:|--:|--:|--:|--:|--:|")
    for layer in args.layers:
        name = studied_weight(task.model, layer)
        objective = GraphObjective(task.model, batch, params=[name])
        unpruned = GraphObjective(task.model, batch, params=[name], prune_unchanged=False)
        n = objective.numel()
        coords = torch.randperm(n, generator=torch.Generator().manual_seed(0))[: args.coords]
        naive_s, naive = best_of(lambda: naive_cdg(task.model, batch, name, coords, args.eps), args.repeat)
        plain_s, _ = best_of(lambda: fast_cdg(unpruned, coords, args.eps), args.repeat)
        objective.pruned_members = objective.evaluated_members = 0
        fast_s, fast = best_of(lambda: fast_cdg(objective, coords, args.eps), args.repeat)
        pruned = objective.pruned_members / max(1, objective.pruned_members + objective.evaluated_members)
        per = 1e3 / len(coords)
        print(f"| {layer} | {n} | {naive_s * per:.1f} | {plain_s * per:.1f} | {fast_s * per:.1f} | {pruned:.0%} | "
              f"{naive_s / fast_s:.1f}x | {float((fast - naive).abs().max()):.1e} |")


if __name__ == "__main__":
    main()
