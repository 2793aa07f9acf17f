"""Training speed of binary layers: the sign pass, and xnor_resnet18's step against its float twin.

    python benchmarks/bench_binary_train.py               # prints the tables, updates BENCHMARKS.md
    python benchmarks/bench_binary_train.py --no-write --rounds 2 --widths 16

1. The elementwise passes of a binary activation on a (128, 16, 32, 32) float32 tensor
   (the first stage of xnor_resnet18 w16 at batch 128): the sign forward in one C++ pass
   (``lowbit.quant.fused``; ``hard_sign``'s default on CPU) against the ATen form (a float
   comparison, times 2, minus 1: three passes), the ``torch.where`` form before it and the
   bare comparison ``torch.ge(x, 0, out=float)``, the issue's yardstick; the ``ste_clipped``
   backward fused (one pass over the gradient and the 1-byte mask the forward wrote) against
   ATen's ``pass_within`` (three passes) and ``torch.where``; and forward + backward through
   autograd, fused and ATen. Same values (tests/test_fused_sign.py, tests/test_sign_speed_paths.py).
2. One training step (forward, cross-entropy, backward, SGD momentum step) of
   xnor_resnet18, with the fused kernels and with the ATen path (``use_fused(False)``),
   and of its float twin (``lowbit.deploy.twin.float_twin``: the same model with plain
   convs in place of the binary ones) at widths 16, 32, 64, batch 128, 3x32x32 random
   inputs. Target (issue 15): binary <= 1.15x the twin.

1 thread, process CPU time, best of N rounds with the variants interleaved.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _binary_bench import best_times, load, machine_line, publish  # noqa: E402

from lowbit.allocator import POLICIES, keep_freed_memory  # noqa: E402
from lowbit.deploy.twin import float_twin  # noqa: E402
from lowbit.models import create_model  # noqa: E402
from lowbit.quant import get_quantizer, hard_sign  # noqa: E402
from lowbit.quant.functional import pass_within  # noqa: E402
from lowbit.quant.fused import EXTENSION, fused_available, use_fused  # noqa: E402

START, END = "<!-- bench_binary_train:start -->", "<!-- bench_binary_train:end -->"
TARGET = 1.15


def sign_table(rounds: int) -> str:
    x = torch.randn(128, 16, 32, 32, generator=torch.Generator().manual_seed(0))
    g = torch.randn_like(x)
    q = get_quantizer("ste_clipped")
    xr = x.clone().requires_grad_()
    if not fused_available():
        raise SystemExit(f"the fused sign kernels are not available here ({EXTENSION.build_error()}); nothing to compare")
    kernels = EXTENSION.load()
    mask = x.abs() <= 1.0

    def aten(fn):
        def run():
            with use_fused(False):
                return fn()

        return run

    times = best_times(
        {
            "sign forward, fused (C++, one pass)": lambda: hard_sign(x),
            "sign forward, ATen: ge(x, 0) * 2 - 1": aten(lambda: hard_sign(x)),
            "torch.where(x >= 0, 1, -1) (before)": lambda: torch.where(x >= 0, 1.0, -1.0),
            "torch.ge(x, 0, out=float) (a bare comparison)": lambda: torch.ge(x, 0, out=torch.empty_like(x)),
            "ste_clipped backward, fused (gradient and 1-byte mask)": lambda: kernels.masked_grad(g, mask, 1.0, -1.0),
            "ste_clipped backward, ATen: pass_within": lambda: pass_within(x, 1.0, g),
            "ste_clipped backward: torch.where(|x| <= 1, g, 0) (before)": lambda: torch.where(x.abs() <= 1.0, g, 0.0),
            "ste_clipped forward + backward (autograd), fused": lambda: torch.autograd.grad(q(xr), xr, g),
            "ste_clipped forward + backward (autograd), ATen": aten(lambda: torch.autograd.grad(q(xr), xr, g)),
        },
        rounds * 10,
    )
    n = x.numel()
    lines = ["| pass | ms | Gelem / s |", "|:--|--:|--:|"]
    lines += [f"| {name} | {s * 1e3:.3f} | {n / s / 1e9:.2f} |" for name, s in times.items()]
    return "\n".join(lines)


def train_rows(widths, batch: int, rounds: int, out=sys.stdout) -> list:
    rows = []
    for width in widths:
        torch.manual_seed(0)
        binary = create_model("xnor_resnet18", width=width).train()
        twin = float_twin(binary).train()
        g = torch.Generator().manual_seed(0)
        x = torch.randn(batch, 3, 32, 32, generator=g)
        y = torch.randint(0, 10, (batch,), generator=g)

        def step_fn(model):
            optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

            def step():
                loss = F.cross_entropy(model(x), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()

            return step

        fused_step, twin_step = step_fn(binary), step_fn(twin)

        def aten_step():
            with use_fused(False):
                fused_step()

        times = best_times({"fused": fused_step, "aten": aten_step, "twin": twin_step}, rounds)
        rows.append((width, times["twin"], times["fused"], times["aten"]))
        print(
            f"width {width:3}: twin {times['twin'] * 1e3:8.1f} ms, xnor fused {times['fused'] * 1e3:8.1f} ms "
            f"({times['fused'] / times['twin']:.3f}x), ATen sign {times['aten'] * 1e3:8.1f} ms "
            f"({times['aten'] / times['twin']:.3f}x)",
            file=out,
            flush=True,
        )
    return rows


def child_rows(policy: str, widths, batch: int, rounds: int) -> list:
    """``train_rows`` in a fresh process with the allocator ``policy`` (set before any tensor exists)."""
    command = [sys.executable, __file__, "--child", policy, "--rounds", str(rounds), "--batch", str(batch), "--widths"]
    done = subprocess.run(command + [str(w) for w in widths], capture_output=True, text=True, check=True)
    sys.stderr.write(done.stderr)
    return json.loads(done.stdout.strip().splitlines()[-1])


def step_table(rows: list) -> list:
    lines = [
        "| width | float twin ms / step | xnor_resnet18 fused ms / step | binary / twin | xnor_resnet18 ATen sign ms / step | binary / twin |",
        "|--:|--:|--:|--:|--:|--:|",
    ]
    lines += [f"| {w} | {t * 1e3:.1f} | {f * 1e3:.1f} | {f / t:.3f}x | {a * 1e3:.1f} | {a / t:.3f}x |" for w, t, f, a in rows]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved training-step rounds (default 5)")
    parser.add_argument("--widths", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--no-write", action="store_true", help="print only; do not update BENCHMARKS.md")
    parser.add_argument("--child", choices=POLICIES, help=argparse.SUPPRESS)  # one policy's rows, as JSON
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.child:
        if args.child == "keep" and not keep_freed_memory():
            raise SystemExit("this C library has no mallopt (not glibc): the 'keep' policy cannot be measured here")
        rows = train_rows(args.widths, args.batch, args.rounds, out=sys.stderr)
        print(json.dumps(rows))
        return
    load_before = load()
    keep_freed_memory()
    signs = sign_table(args.rounds)
    print(signs, flush=True)
    rows = {policy: child_rows(policy, args.widths, args.batch, args.rounds) for policy in POLICIES}
    load_after = load()
    worst = {policy: max(fused / twin for _, twin, fused, _ in r) for policy, r in rows.items()}
    verdict = "met" if worst["keep"] <= TARGET else "missed"
    text = "\n".join(
        [
            "## Binary layers in training",
            "",
            "`python benchmarks/bench_binary_train.py`: 1 thread, process CPU time, best of interleaved rounds.",
            "",
            "**The sign pass** on a (128, 16, 32, 32) float32 activation. The fused kernels "
            "(`lowbit.quant.fused`, C++) write the sign and the surrogate's 1-byte mask in one pass and the "
            "gradient in one more; ATen needs three passes each way (and `torch.where` with scalar operands, the "
            "form before, is slow on this CPU). Same values, NaN and -0 included:",
            "",
            signs,
            "",
            f"**Training step**, xnor_resnet18 (fused kernels, and the ATen path) against its float twin (the same "
            f"model with plain convs in place of the binary ones), batch {args.batch}, 3x32x32, SGD momentum, best of "
            f"{args.rounds}; each allocator policy in its own process. Target <= {TARGET}x: worst {worst['keep']:.3f}x "
            f"fused with the `lowbit` command's allocator policy ({verdict}).",
            "",
            "*`LOWBIT_MALLOC=keep`* (the `lowbit` command's default, `lowbit.allocator`: glibc keeps freed memory, "
            "so a step faults no fresh pages in):",
            "",
            *step_table(rows["keep"]),
            "",
            f"*`LOWBIT_MALLOC=default`* (glibc's own policy: large blocks mapped and unmapped every step; worst "
            f"{worst['default']:.3f}x fused; the float twin itself is {_speedup(rows)} slower here):",
            "",
            *step_table(rows["default"]),
            "",
            f"Machine: {machine_line(load_before, load_after)} {dt.date.today().isoformat()}.",
        ]
    )
    publish(text, START, END, write=not args.no_write)


def _speedup(rows: dict) -> str:
    """The float twin's step time with glibc's policy over 'keep', per width (e.g. "1.21-1.28x")."""
    ratios = [d[1] / k[1] for k, d in zip(rows["keep"], rows["default"])]
    low, high = f"{min(ratios):.2f}", f"{max(ratios):.2f}"
    return f"{low}x" if low == high else f"{low}-{high}x"


if __name__ == "__main__":
    main()
