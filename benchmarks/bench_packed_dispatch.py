"""What the torch custom ops would cost in eager mode: a packed model's forward, three ways.

    python benchmarks/bench_packed_dispatch.py              # prints the table (BENCHMARKS.md unchanged)
    python benchmarks/bench_packed_dispatch.py --rounds 5 --width 8

``lowbit.deploy.ops`` registers the XNOR kernels as torch custom ops (``lowbit::binary_layer``,
``lowbit::pack_signs``) so that packed models export, trace and compile; in eager mode it
calls the kernels directly. This measures the packed xnor_resnet18 (batch 1 and 64)
side by side, 1 thread, best of N interleaved rounds of process CPU time, with each
packed layer calling

- *direct*: the kernel without the ``ops.recording`` check (the code before the custom ops);
- *shipped*: ``ops.recording(x)`` decides, then the kernel (what eager runs now);
- *custom op*: ``torch.ops.lowbit.*`` every time (the dispatcher's Python custom-op path).

The three outputs are checked equal bit for bit.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import Iterator, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _binary_bench import best_times, load, machine_line  # noqa: E402

from lowbit.deploy import ops, pack_model  # noqa: E402
from lowbit.models import create_model  # noqa: E402


@contextlib.contextmanager
def routing(always: Optional[bool]) -> Iterator[None]:
    """Make every packed layer take the custom op (True) or the direct call (False); None: as shipped."""
    original = ops.recording
    if always is not None:
        ops.recording = lambda x: always  # the packed layers look it up at each call
    try:
        yield
    finally:
        ops.recording = original


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds; best of them (default 15)")
    parser.add_argument("--width", type=int, default=64, help="xnor_resnet18 width (default 64)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    packed = pack_model(create_model("xnor_resnet18", width=args.width).eval())
    calls = len(packed.layers()) + sum(not layer.input_is_bits for layer in packed.layers().values())
    load_before = load()
    lines = [
        f"xnor_resnet18(width={args.width}) packed, {calls} kernel calls per forward; "
        f"best of {args.rounds} rounds, process CPU time",
        "",
        "| batch | direct ms | shipped ms | custom op ms | custom op / direct | shipped / direct |",
        "|--:|--:|--:|--:|--:|--:|",
    ]
    for batch in (1, 64):
        x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch))

        def forward(always: Optional[bool]) -> torch.Tensor:
            with routing(always):  # in all three, so that its small cost is in all three
                return packed(x)

        variants = {"direct": lambda: forward(False), "shipped": lambda: forward(None), "custom op": lambda: forward(True)}
        reference = forward(False)
        for name, run in variants.items():
            assert torch.equal(run(), reference), f"{name} differs from the direct call"
        t = best_times(variants, args.rounds)
        lines.append(
            f"| {batch} | {t['direct'] * 1e3:.3f} | {t['shipped'] * 1e3:.3f} | {t['custom op'] * 1e3:.3f} | "
            f"{t['custom op'] / t['direct']:.3f}x | {t['shipped'] / t['direct']:.3f}x |"
        )
        print(lines[-1], flush=True)
    lines += ["", f"Machine: {machine_line(load_before, load())}"]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
