"""Packed binary conv vs fp32 conv of the same shape, at the XNOR-ResNet-18 (width 64) layer shapes.

    python benchmarks/bench_binary_conv.py               # AVX-512 (if the CPU has it) and AVX2 tables; BENCHMARKS.md
    python benchmarks/bench_binary_conv.py --no-write --rounds 5

Per shape (C_in -> C_out, 3x3, stride, input side; batch so that the im2col has
M = 1024 rows, the issue's setting, and batch 1):

- fp32 conv: ``F.conv2d`` (oneDNN) on float32, the reference;
- packed, bits -> bits: :class:`lowbit.deploy.PackedBinaryConv2d` from packed input
  bits to thresholded output bits (the form inside a binary block: conv1 -> BN -> sign);
- float -> bits: packing a float input's signs included (conv1 of an XNOR block);
- bits -> float: alpha * dot + bias written as float32 NCHW (conv2, feeding the residual);
- GEMM: the XNOR-popcount GEMM alone against ``torch.matmul`` of the same im2col shape
  (M x K x C_out): the kernel's ceiling, without im2col or output stage.

The AVX2 table forces the AVX2 kernel, and runs in a subprocess with oneDNN and ATen
limited to AVX2 (``ONEDNN_MAX_CPU_ISA=AVX2``, ``ATEN_CPU_CAPABILITY=avx2``), so that the
fp32 reference is the one an AVX2 machine would run: like with like.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _binary_bench import best_times, load, machine_line, publish  # noqa: E402

from lowbit.deploy import PackedBinaryConv2d, available_kernels, kernels, use_kernel  # noqa: E402
from lowbit.nn import BinaryConv2d  # noqa: E402

START, END = "<!-- bench_binary_conv:start -->", "<!-- bench_binary_conv:end -->"
TARGET = 8.0  # packed conv >= 8x fp32 conv on AVX-512 (issue 15)

# (label, C_in, C_out, stride, input side): every distinct binary conv of xnor_resnet18(width=64) on 32x32
SHAPES = [
    ("layer1 64->64", 64, 64, 1, 32),
    ("layer2.0.conv1 64->128 /2", 64, 128, 2, 32),
    ("layer2 128->128", 128, 128, 1, 16),
    ("layer3.0.conv1 128->256 /2", 128, 256, 2, 16),
    ("layer3 256->256", 256, 256, 1, 8),
    ("layer4.0.conv1 256->512 /2", 256, 512, 2, 8),
    ("layer4 512->512", 512, 512, 1, 4),
]


def measure(kernel: str, rounds: int) -> list:
    torch.set_num_threads(1)
    rows = []
    for label, cin, cout, stride, side in SHAPES:
        out_side = side // stride
        for batch in sorted({max(1, 1024 // (out_side * out_side)), 1}, reverse=True):
            torch.manual_seed(0)
            layer = BinaryConv2d(cin, cout, 3, stride=stride, padding=1).eval()
            bn = torch.nn.BatchNorm2d(cout).eval()
            x = torch.randn(batch, cin, side, side)
            w = torch.randn(cout, cin, 3, 3)
            bits_in = kernels.pack_signs(x, 1)
            to_bits = PackedBinaryConv2d(layer, input_is_bits=True, out_bn=bn, out_groups=1)
            float_to_bits = PackedBinaryConv2d(layer, input_is_bits=False, out_bn=bn, out_groups=1)
            to_float = PackedBinaryConv2d(layer, input_is_bits=True)
            m, k = batch * out_side * out_side, cin * 9
            a_float, b_float = torch.randn(m, k), torch.randn(k, cout)
            a_bits = torch.randint(-(2**62), 2**62, (1, m, k // 64), dtype=torch.int64)
            panel = to_bits.panel()
            with use_kernel(kernel):
                times = best_times(
                    {
                        "fp32": lambda: F.conv2d(x, w, padding=1, stride=stride),
                        "bits->bits": lambda: to_bits(bits_in),
                        "float->bits": lambda: float_to_bits(x),
                        "bits->float": lambda: to_float(bits_in),
                        "matmul": lambda: torch.matmul(a_float, b_float),
                        "gemm": lambda: kernels.popcount_gemm(a_bits, panel, cout),
                    },
                    rounds,
                )
            rows.append({"label": label, "batch": batch, "m": m, "k": k, "n": cout, **times})
            print(
                f"{kernel:7} {label:28} batch {batch:3}: fp32 {times['fp32'] * 1e3:7.3f} ms, bits->bits "
                f"{times['fp32'] / times['bits->bits']:5.1f}x, float->bits {times['fp32'] / times['float->bits']:5.1f}x, "
                f"bits->float {times['fp32'] / times['bits->float']:5.1f}x, GEMM {times['matmul'] / times['gemm']:5.1f}x",
                flush=True,
            )
    return rows


def table(rows: list) -> str:
    lines = [
        "| layer shape | batch | M x K x C_out | fp32 conv ms | bits -> bits | float -> bits | bits -> float | GEMM vs fp32 matmul |",
        "|:--|--:|:--|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        f = r["fp32"]
        lines.append(
            f"| {r['label']} | {r['batch']} | {r['m']} x {r['k']} x {r['n']} | {f * 1e3:.3f} | "
            f"{f / r['bits->bits']:.1f}x | {f / r['float->bits']:.1f}x | {f / r['bits->float']:.1f}x | {r['matmul'] / r['gemm']:.1f}x |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds; best of them (default 15)")
    parser.add_argument("--no-write", action="store_true", help="print only; do not update BENCHMARKS.md")
    parser.add_argument("--kernel", default=None, help=argparse.SUPPRESS)  # the subprocess mode: print JSON rows
    args = parser.parse_args()
    if args.kernel:
        print("JSON " + json.dumps({"rows": measure(args.kernel, args.rounds), "machine": machine_line(load(), load())}))
        return

    kernels_here = available_kernels()
    load_before = load()
    sections = []
    if "avx512" in kernels_here:
        rows = measure("avx512", args.rounds)
        first = [r for r in rows if r["m"] >= 1024]
        worst = min(r["fp32"] / r["bits->bits"] for r in first)
        sections.append(
            "**AVX-512 VPOPCNTDQ kernel** (fp32: oneDNN with AVX-512). Target: packed conv >= "
            f"{TARGET:.0f}x fp32 at every layer shape (M = 1024 rows): bits -> bits reaches {worst:.1f}x at the worst shape "
            f"({'met' if worst >= TARGET else 'missed'}).\n\n" + table(rows)
        )
    if "avx2" in kernels_here:
        env = dict(os.environ, ONEDNN_MAX_CPU_ISA="AVX2", ATEN_CPU_CAPABILITY="avx2")
        result = subprocess.run(
            [sys.executable, __file__, "--kernel", "avx2", "--rounds", str(args.rounds)],
            env=env, capture_output=True, text=True, check=True,
        )
        print(result.stdout.split("JSON ")[0], end="")
        payload = json.loads(result.stdout.split("JSON ", 1)[1])
        sections.append(
            "**AVX2 kernel, forced** (fp32 reference limited to AVX2 too: `ONEDNN_MAX_CPU_ISA=AVX2`, "
            f"`ATEN_CPU_CAPABILITY=avx2`; the subprocess's machine line: {payload['machine']})\n\n" + table(payload["rows"])
        )
    load_after = load()
    text = "\n".join(
        [
            "## Packed binary convolution (lowbit.deploy)",
            "",
            "`python benchmarks/bench_binary_conv.py`: one binary 3x3 conv (padding 1) of xnor_resnet18(width=64) "
            "packed (`PackedBinaryConv2d`, weights 64 signs per int64 word) against `F.conv2d` in float32 of the "
            "same shape; each figure is fp32 time / packed time, best of "
            f"{args.rounds} interleaved rounds of process CPU time, 1 thread. Batch: the one that gives the "
            "im2col M = 1024 rows (the issue's shapes), then batch 1. *bits -> bits*: packed input to thresholded "
            "packed output (conv1 -> BN -> sign inside a block); *float -> bits* includes packing the float "
            "input's signs; *bits -> float* writes alpha * dot + bias as float32 NCHW (conv2, into the residual "
            "stream); *GEMM*: the XNOR-popcount GEMM alone vs `torch.matmul` of the same M x K x C_out. Every "
            "packed output is bit-identical to the simulated layer (tests/test_deploy.py).",
            "",
            *sections,
            "",
            f"Machine: {machine_line(load_before, load_after)} {dt.date.today().isoformat()}.",
        ]
    )
    publish(text, START, END, write=not args.no_write)


if __name__ == "__main__":
    main()
