"""torch.compile in training on the CPU: xnor_resnet18 and its float twin, eager against compiled.

    python benchmarks/bench_compile_train.py                # widths 16 and 32, updates BENCHMARKS.md
    python benchmarks/bench_compile_train.py --no-write --widths 16 --rounds 3

One training step (forward, cross-entropy, backward, SGD momentum step), batch 128,
3x32x32 random inputs, in four variants side by side: the binary model and its float
twin (``lowbit.deploy.twin.float_twin``), each eager (with lowbit's fused C++ sign
kernels) and ``torch.compile``d (inductor, default mode: the whole training forward
is one graph, tests/test_compile_quantizers.py, so inductor fuses the sign, its
surrogate mask and the BatchNorm around each binary conv into generated C++). The
compiled variants are checked against eager first: the same loss on the first step.
The compile time (the first compiled step, wall-clock, with an empty inductor cache) is
reported beside.

1 thread, process CPU time, best of N rounds with the variants interleaved;
lowbit's allocator policy (``keep``) as the ``lowbit`` command runs.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import os
import sys
import tempfile
import time
from pathlib import Path

# a cold compile: inductor's on-disk cache of earlier runs would hide the compile time
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="lowbit-inductor-"))

import torch  # noqa: E402
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _binary_bench import best_times, load, machine_line, publish  # noqa: E402

from lowbit.allocator import keep_freed_memory  # noqa: E402
from lowbit.deploy.twin import float_twin  # noqa: E402
from lowbit.models import create_model  # noqa: E402

START, END = "<!-- bench_compile_train:start -->", "<!-- bench_compile_train:end -->"


def make_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step() -> float:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    return step


def rows_for(width: int, batch: int, rounds: int) -> dict:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)
    steps, compile_s = {}, {}
    for kind in ("binary", "twin"):
        torch.manual_seed(0)
        eager = create_model("xnor_resnet18", width=width).train()
        if kind == "twin":
            eager = float_twin(eager).train()
        compiled_model = copy.deepcopy(eager)  # the same weights, its own optimizer state
        eager_step = make_step(eager, x, y)
        compiled_step = make_step(torch.compile(compiled_model), x, y)
        first_eager = eager_step()
        t0 = time.perf_counter()  # wall time: inductor compiles in worker processes
        first_compiled = compiled_step()  # compiles the forward and the backward
        compile_s[kind] = time.perf_counter() - t0
        # inductor rounds the fused BatchNorm and convolutions differently from eager; the float twin stays
        # within 1e-4, the binary model less close: a pre-activation within rounding of 0 flips its sign
        tolerance = 1e-4 if kind == "twin" else 2e-2
        if abs(first_compiled - first_eager) > tolerance * max(1.0, abs(first_eager)):
            raise SystemExit(f"{kind} w{width}: compiled loss {first_compiled} != eager {first_eager}")
        steps[f"{kind} eager"], steps[f"{kind} compiled"] = eager_step, compiled_step
    times = best_times(steps, rounds)
    print(f"width {width}: " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in times.items())
          + f"; compile {compile_s['binary']:.0f} s / {compile_s['twin']:.0f} s", flush=True)
    return {"width": width, "times": times, "compile": compile_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--widths", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-write", action="store_true", help="print only; do not update BENCHMARKS.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    keep_freed_memory()
    before = load()
    results = [rows_for(w, args.batch, args.rounds) for w in args.widths]
    after = load()
    table = ["| width | twin eager (ms) | twin compiled (ms) | binary eager (ms) | binary compiled (ms) "
             "| compiled / eager: twin, binary | binary / twin: eager, compiled | cold compile, wall s: binary, twin |",
             "|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for r in results:
        t = r["times"]
        te, tc, be, bc = t["twin eager"], t["twin compiled"], t["binary eager"], t["binary compiled"]
        table.append(f"| {r['width']} | {te * 1e3:.1f} | {tc * 1e3:.1f} | {be * 1e3:.1f} | {bc * 1e3:.1f} "
                     f"| {tc / te:.2f}x, {bc / be:.2f}x | {be / te:.2f}x, {bc / tc:.2f}x "
                     f"| {r['compile']['binary']:.0f}, {r['compile']['twin']:.0f} |")
    text = "\n".join([
        "## torch.compile in training (CPU)",
        "",
        f"`python benchmarks/bench_compile_train.py`: one xnor_resnet18 training step at batch {args.batch} (3x32x32), "
        "eager (lowbit's fused sign kernels) and `torch.compile`d (inductor, default mode; one graph per model, the "
        "quantizers included), binary and its float twin side by side; best of "
        f"{args.rounds} interleaved rounds, process CPU time, 1 thread, allocator policy `keep`.",
        "",
        *table,
        "",
        f"Machine: {machine_line(before, after)} {dt.date.today().isoformat()}.",
    ])
    publish(text, START, END, not args.no_write)


if __name__ == "__main__":
    main()
