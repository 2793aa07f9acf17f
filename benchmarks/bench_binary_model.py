"""Whole-model inference: xnor_resnet18 (width 64) packed vs its float twin, batch 1 and 64; weight memory.

    python benchmarks/bench_binary_model.py               # prints the table, updates BENCHMARKS.md
    python benchmarks/bench_binary_model.py --no-write --rounds 3

Side by side, in eval mode under ``torch.no_grad``, 3x32x32 inputs, 1 thread, process
CPU time, best of N interleaved rounds:

- float twin: the same network with every binary conv a plain ``nn.Conv2d``
  (``lowbit.deploy.twin.float_twin``): what the binary model saves against;
- simulated: the binary model as trained (sign, scale and a float conv of +-1 values);
- packed: ``pack_model`` with the AVX-512 kernel (where the CPU has it), then AVX2.

The packed logits equal the simulated model's (exact eval form) bit for bit; the
run checks it. The stem conv, the 1x1 shortcuts and the head stay float in all three.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _binary_bench import best_times, load, machine_line, publish  # noqa: E402

from lowbit.deploy import available_kernels, pack_model, use_kernel  # noqa: E402
from lowbit.deploy.summary import format_packed_summary, packed_summary  # noqa: E402
from lowbit.deploy.twin import float_twin  # noqa: E402
from lowbit.models import create_model  # noqa: E402
from lowbit.nn import set_exact_eval  # noqa: E402

START, END = "<!-- bench_binary_model:start -->", "<!-- bench_binary_model:end -->"
WIDTH = 64


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds; best of them (default 7)")
    parser.add_argument("--no-write", action="store_true", help="print only; do not update BENCHMARKS.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = set_exact_eval(create_model("xnor_resnet18", width=WIDTH).eval())
    twin = float_twin(model).eval()
    packed = pack_model(model)
    kernels_here = [k for k in ("avx512", "avx2") if k in available_kernels()]
    load_before = load()
    rows = []
    for batch in (1, 64):
        x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            reference = model(x)
        variants = {"float twin": lambda: twin(x), "simulated binary": lambda: model(x)}
        for kernel in kernels_here:
            def run(kernel=kernel):
                with use_kernel(kernel):
                    return packed(x)

            assert torch.equal(run(), reference), f"packed ({kernel}) differs from the simulated model"
            variants[f"packed, {kernel}"] = run
        with torch.no_grad():
            times = best_times(variants, args.rounds)
        for name, seconds in times.items():
            rows.append((batch, name, seconds, times["float twin"] / seconds))
            print(f"batch {batch:3} {name:18} {seconds * 1e3:9.2f} ms  {times['float twin'] / seconds:5.2f}x", flush=True)
    load_after = load()
    memory = format_packed_summary(packed_summary(model, packed))
    table = ["| batch | model | ms / batch | images / s | speed-up vs float twin |", "|--:|:--|--:|--:|--:|"]
    table += [f"| {b} | {name} | {s * 1e3:.2f} | {b / s:,.0f} | {r:.2f}x |" for b, name, s, r in rows]
    text = "\n".join(
        [
            "## Packed xnor_resnet18: whole-model latency and weight memory",
            "",
            f"`python benchmarks/bench_binary_model.py`: xnor_resnet18(width={WIDTH}) on random 3x32x32 inputs, eval "
            "mode, `torch.no_grad`, best of "
            f"{args.rounds} interleaved rounds of process CPU time, 1 thread. *Float twin*: the same network with "
            "plain float convs in place of the binary ones (`lowbit.deploy.twin.float_twin`); *simulated*: the "
            "binary model as trained (float convs of +-1 values); *packed*: `lowbit.deploy.pack_model`, whose "
            "logits the run checks equal to the simulated model's bit for bit. The float stem conv (3 -> 64 at "
            "32x32, 1/5 of the twin's MACs), the 1x1 shortcuts and the head run in float32 in every variant, "
            "which bounds the whole-model gain.",
            "",
            *table,
            "",
            "Weight memory (`lowbit.deploy.summary`; the packed format stores these int64 words):",
            "",
            memory,
            "",
            f"Machine: {machine_line(load_before, load_after)} {dt.date.today().isoformat()}.",
        ]
    )
    publish(text, START, END, write=not args.no_write)


if __name__ == "__main__":
    main()
