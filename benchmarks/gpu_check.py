"""The GPU figures of issue #13 in one run, for the few minutes a GPU is lent.

    python3 benchmarks/gpu_check.py --out $OUT                 # on a GPU machine: every section, ~7.5 min
    python3 benchmarks/gpu_check.py --out /tmp/g --device cpu --quick   # the same code on a CPU, tiny sizes
    python3 benchmarks/gpu_check.py --out $OUT --sections nes,train_steps --budget 120   # a rerun of two

On the device machine run it from the repository root with ``PYTHONPATH=src``
(nothing is installed there; torch, numpy, PyYAML, tqdm and matplotlib come
with its image). The sections run in this order, each only if the time left
in ``--budget`` covers what it needs; every section appends its table to
``OUT/gpu_check.md`` and its numbers to ``OUT/gpu_check.json`` as soon as it
ends, so a run cut short still returns what it measured:

- ``machine``      GPU, driver, torch and CUDA versions, the host CPU.
- ``peak``         the ceilings: float32 (TF32 off) and bf16 matmul TFLOP/s, device-to-device copy GB/s.
- ``cuda_tests``   ``pytest -m cuda`` on the device tests (probe, the four analyses, train, binary layers:
                   CPU == CUDA; compile, fp16/bf16).
- ``nes``          NES population evaluation on the toy at dim 64 (batches 16 000 and the notes' 160 000):
                   useful GFLOP/s beside the float32 peak, and one ``nes(population=50000)`` estimate.
- ``cell``         one dim-64 cell of the notes' protocol (configs/sweep-toy-protocol.yaml, c015) for the
                   time it is given; the cell's time is extrapolated from the units it finished.
- ``train_steps``  training images/s at batch 512 on CIFAR-sized random uint8 images: resnet9,
                   xnor_resnet18 (width 64) and its float twin; fp32 and bf16 + channels_last; torch.compile
                   off and on; beside airbench94's published 94 % in 3.83 s on an A100.
- ``probe``        the built-in default probe (``lowbit probe``) on the GPU, and on this machine's CPU.
- ``ddp``          ``torchrun -m lowbit train`` with nccl: 2 ranks equal 1 process where 2 GPUs exist; on
                   one GPU, the clear error for more ranks than GPUs.

Timing: CUDA events (``torch.cuda.Event``) around the timed region after
warm-up steps, median of the repeats; on a CPU, wall-clock with the same
median. Inputs are random, never zeros.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
if str(SRC) not in sys.path:  # the device machine runs the tree as it is, nothing installed
    sys.path.insert(0, str(SRC))

AIRBENCH94 = {"seconds": 3.83, "epochs": 10, "images": 50_000, "gpu": "A100"}  # as issue #13 quotes it (Jordan 2024)
# in order of what matters most when the time runs out: correctness, then the figures issue #13 names
SECTIONS = ("machine", "peak", "cuda_tests", "nes", "cell", "train_steps", "probe", "ddp")


class Budget:
    """The run's time budget: what is left, and whether a section that needs ``seconds`` still fits."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    def allows(self, seconds: float) -> bool:
        return self.left() >= seconds


class Report:
    """``gpu_check.md`` and ``gpu_check.json`` in ``out``, rewritten after every section."""

    def __init__(self, out: Path, argv: List[str]):
        self.out = out
        self.markdown: List[str] = ["# lowbit GPU check", "", f"`python3 benchmarks/gpu_check.py {' '.join(argv)}`", ""]
        self.numbers: Dict[str, Any] = {}

    def add(self, section: str, lines: List[str], numbers: Dict[str, Any]) -> None:
        self.markdown += [f"## {section}", "", *lines, ""]
        self.numbers[section] = numbers
        self.flush()

    def flush(self) -> None:
        (self.out / "gpu_check.md").write_text("\n".join(self.markdown) + "\n")
        (self.out / "gpu_check.json").write_text(json.dumps(self.numbers, indent=1, default=str) + "\n")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], Any], device: torch.device, warmup: int, repeat: int) -> float:
    """Median seconds of ``fn()`` after ``warmup`` calls: CUDA events on a GPU, the wall clock on a CPU."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeat):
        if device.type == "cuda":
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            stop.record()
            stop.synchronize()
            times.append(start.elapsed_time(stop) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def tail(text: str, lines: int = 15) -> List[str]:
    return text.strip().splitlines()[-lines:]


def run_logged(command: List[str], log: Path, timeout: float, env: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    """Run ``command`` (output to ``log``) for at most ``timeout`` s; rc, seconds and whether it was cut off."""
    full_env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "PYTHONUNBUFFERED": "1",
                **(env or {})}
    t0 = time.monotonic()
    with open(log, "a") as handle:
        handle.write(f"\n$ {' '.join(command)}\n")
        handle.flush()
        try:
            rc = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=full_env, cwd=ROOT,
                                timeout=max(1.0, timeout)).returncode
            cut = False
        except subprocess.TimeoutExpired:
            rc, cut = None, True
    return {"rc": rc, "seconds": time.monotonic() - t0, "cut_off": cut}


# ---- sections: each returns (Markdown lines, numbers)


def machine_section(args: argparse.Namespace, device: torch.device) -> tuple:
    from lowbit.runs import cpu_name

    numbers: Dict[str, Any] = {"torch": torch.__version__, "cuda_build": torch.version.cuda, "python": platform.python_version(),
                               "cpu": cpu_name(), "cpu_count": os.cpu_count(), "load": os.getloadavg()[0]}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        numbers.update(gpu=props.name, capability=f"{props.major}.{props.minor}", multiprocessors=props.multi_processor_count,
                       memory_gib=round(props.total_memory / 2**30, 1), gpus=torch.cuda.device_count())
        smi = shutil.which("nvidia-smi")
        if smi:
            query = subprocess.run([smi, "--query-gpu=driver_version,clocks.sm,clocks.max.sm,power.limit", "--format=csv,noheader"],
                                   capture_output=True, text=True)
            numbers["nvidia_smi"] = query.stdout.strip()
    # lowbit's C++ kernels (CPU tensors: the fused sign, the packed ops) compile at first use; build them now, so
    # that no timed section below (the CPU probe) pays for it
    from lowbit.deploy.kernels import EXTENSION as deploy_kernels
    from lowbit.quant.fused import EXTENSION as sign_kernels

    t0 = time.monotonic()
    built = [ext.load() is not None for ext in (sign_kernels, deploy_kernels)]
    numbers["cpp_kernels"] = f"{'built' if all(built) else 'NOT built'} in {time.monotonic() - t0:.0f} s"
    lines = [f"- {k}: {v}" for k, v in numbers.items()]
    return lines, numbers


def peak_section(args: argparse.Namespace, device: torch.device) -> tuple:
    """Matmul TFLOP/s (float32 with TF32 off, bf16) on random n x n operands, and copy bandwidth."""
    from lowbit.devices import set_tf32

    n = 256 if args.quick else 8192
    g = torch.Generator(device=device).manual_seed(0)
    numbers: Dict[str, Any] = {"n": n}
    set_tf32(False)
    for dtype, name in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
        if device.type == "cpu" and dtype == torch.bfloat16 and not args.quick:
            continue
        a = torch.randn(n, n, generator=g, device=device).to(dtype)
        b = torch.randn(n, n, generator=g, device=device).to(dtype)
        seconds = median_seconds(lambda: a @ b, device, 3, 10)
        numbers[f"{name}_tflops"] = 2 * n**3 / seconds / 1e12
    source = torch.randn((1 << 26) if not args.quick else (1 << 16), generator=g, device=device)  # 256 MiB
    target = torch.empty_like(source)
    seconds = median_seconds(lambda: target.copy_(source), device, 3, 10)
    numbers["copy_gbs"] = 2 * source.numel() * 4 / seconds / 1e9  # bytes read + bytes written
    lines = [f"{n}x{n}x{n} matmul, median of 10 after 3 warm-ups, random operands; TF32 off:", "",
             "| float32 TFLOP/s | bf16 TFLOP/s | device-to-device copy GB/s (read + write) |", "|--:|--:|--:|",
             f"| {numbers.get('fp32_tflops', float('nan')):.1f} | {numbers.get('bf16_tflops', float('nan')):.1f} "
             f"| {numbers['copy_gbs']:.0f} |"]
    return lines, numbers


def cuda_tests_section(args: argparse.Namespace, device: torch.device, budget: Budget) -> tuple:
    log = args.out / "cuda_tests.log"
    files = ["tests/test_devices.py", "tests/test_probe_device.py", "tests/test_analysis_device.py", "tests/test_train_compile.py",
             "tests/test_train_precision.py"]
    result = run_logged([sys.executable, "-m", "pytest", "-m", "cuda", "-o", "addopts=", "-q", "-p", "no:cacheprovider",
                         "-rs", *files], log, min(args.section_cap, budget.left() - 5))
    text = log.read_text()
    summary = next((line for line in reversed(text.splitlines()) if re.search(r"\d+ (passed|failed|skipped|error)", line)), "")
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", summary)}
    numbers = {**result, **counts, "summary": summary}
    lines = [f"`pytest -m cuda {' '.join(files)}`: **{summary or 'no summary (see cuda_tests.log)'}**"
             + (" (cut off at its time limit)" if result["cut_off"] else "")]
    if counts.get("failed") or counts.get("error") or counts.get("errors") or result["rc"] not in (0, 5):
        lines += ["", "```", *tail(text, 30), "```"]
    return lines, numbers


def nes_section(args: argparse.Namespace, device: torch.device, budget: Budget, peak: Dict[str, Any]) -> tuple:
    """Batched NES members through the whole toy network: useful GFLOP/s = members * batch * d^2 * 2 * depth / s."""
    from lowbit.devices import set_tf32
    from lowbit.estimators import get_estimator
    from lowbit.probe.toy import ToyTask

    set_tf32(False)
    depth = 3
    cases = [(8, 512, 16)] if args.quick else [(16, 16000, 512), (32, 16000, 512), (64, 16000, 512), (64, 160000, 512)]
    rows, numbers = [], {"cases": []}
    for dim, batch, pop in cases:
        objective = ToyTask(dim, depth=depth, act="ste", batch_size=batch, seed=0, device=device).objective(layers=[0])
        g = torch.Generator().manual_seed(dim)
        stacked = {k: (v[None].cpu() + 0.1 * torch.randn(pop, *v.shape, generator=g)).to(device) for k, v in objective.params.items()}
        with torch.no_grad():
            seconds = median_seconds(lambda: objective.losses(stacked), device, 2, 5)
            one = median_seconds(lambda: objective.loss({k: v[0] for k, v in stacked.items()}), device, 2, 10)
        flops = pop * batch * dim * dim * 2 * depth
        case = {"dim": dim, "batch": batch, "members": pop, "seconds": seconds, "gflops": flops / seconds / 1e9,
                "loop_seconds_per_member": one}
        numbers["cases"].append(case)
        of_peak = case["gflops"] / (peak["fp32_tflops"] * 1e3) if peak.get("fp32_tflops") else float("nan")
        rows.append(f"| {dim} | {batch} | {pop} | {seconds * 1e3 / pop:.3f} | {case['gflops']:.0f} | {of_peak:.0%} "
                    f"| {one * pop / seconds:.1f}x |")
    dim, batch, population = (8, 512, 64) if args.quick else (64, 160000, 50000)
    need = numbers["cases"][-1]["seconds"] / numbers["cases"][-1]["members"] * population * 1.5 + 5
    estimate_line = f"nes(population={population}) at dim {dim}, batch {batch}: skipped (needs ~{need:.0f} s)"
    if budget.allows(need + 30):
        objective = ToyTask(dim, depth=depth, act="ste", batch_size=batch, seed=0, device=device).objective(layers=[0])
        nes = get_estimator("nes", population=population, sigma=0.1)
        synchronize(device)
        t0 = time.perf_counter()
        nes.estimate(objective, torch.Generator().manual_seed(0))
        synchronize(device)
        seconds = time.perf_counter() - t0
        tflop = population * batch * dim * dim * 2 * depth / 1e12
        numbers["nes_estimate"] = {"dim": dim, "batch": batch, "population": population, "seconds": seconds, "tflop": tflop}
        estimate_line = (f"One `nes(population={population}, sigma=0.1).estimate` at dim {dim}, batch {batch} "
                         f"({tflop:.0f} TFLOP of member evaluations): **{seconds:.1f} s**.")
    lines = [f"Toy, depth {depth}, a perturbed first layer, every member through the whole network; TF32 off. "
             "The loop is one `objective.loss` per member.", "",
             "| dim | batch | members | ms / member | useful GFLOP/s | of float32 peak | vs loop |", "|--:|--:|--:|--:|--:|--:|--:|",
             *rows, "", estimate_line]
    return lines, numbers


def _train_step(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, augment: Any, optimizer: Any,
                generator: torch.Generator, bf16: bool, channels_last: bool) -> None:
    """One step as ``lowbit.train.loop`` takes it: augment uint8 images, forward, cross-entropy, backward, SGD."""
    x = augment(images, generator=generator)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast(images.device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
        loss = F.cross_entropy(model(x).float(), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def train_steps_section(args: argparse.Namespace, device: torch.device, budget: Budget) -> tuple:
    from lowbit.data import BatchAugment
    from lowbit.deploy.twin import float_twin
    from lowbit.devices import set_tf32
    from lowbit.models import create_model

    set_tf32(False)
    batch, size = (32, 32) if args.quick else (512, 32)
    width = 4 if args.quick else 64
    models = [("resnet9", "resnet9", {"width_mult": 0.125} if args.quick else {}),
              (f"xnor_resnet18 w{width}", "xnor_resnet18", {"width": width}),
              (f"float twin of xnor_resnet18 w{width}", "twin", {"width": width})]
    settings = [("fp32", False, False, None), ("bf16 + channels_last", True, True, None),
                ("bf16 + channels_last, torch.compile", True, True, "compile")]
    backend = "eager" if args.quick else "inductor"  # --quick checks the plumbing, not inductor's C++ build
    g = torch.Generator(device=device).manual_seed(0)
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=device, generator=g)  # (B, 3, 32, 32)
    labels = torch.randint(0, 10, (batch,), device=device, generator=g)
    augment = BatchAugment(crop_padding=4, flip=True, mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26))
    rows, numbers = [], {"batch": batch, "cases": []}
    for label, name, kwargs in models:
        for setting, bf16, channels_last, compile_ in settings:
            if compile_ and not budget.allows(150 if not args.quick else 10):  # a compile, and the probe after it
                rows.append(f"| {label} | {setting} | skipped: out of time | | |")
                continue
            torch.manual_seed(0)
            if name == "twin":
                model = float_twin(create_model("xnor_resnet18", num_classes=10, in_channels=3, **kwargs))
            else:
                model = create_model(name, num_classes=10, in_channels=3, **kwargs)
            model = model.to(device).train()
            if channels_last:
                model = model.to(memory_format=torch.channels_last)
            optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
            step_model = torch.compile(model, backend=backend) if compile_ else model
            step = lambda: _train_step(step_model, images, labels, augment, optimizer, g, bf16, channels_last)  # noqa: E731
            t0 = time.perf_counter()
            step()  # the first step: cuDNN autotuning, or torch.compile's compilation
            synchronize(device)
            first = time.perf_counter() - t0
            seconds = median_seconds(step, device, 2, 5 if args.quick else 20)
            case = {"model": label, "setting": setting, "ms_per_step": seconds * 1e3, "images_per_s": batch / seconds,
                    "first_step_s": first}
            numbers["cases"].append(case)
            rows.append(f"| {label} | {setting} | {seconds * 1e3:.1f} | {batch / seconds:,.0f} | {first:.1f} |")
            del model, optimizer, step_model
            if device.type == "cuda":
                torch.cuda.empty_cache()
    air = AIRBENCH94["epochs"] * AIRBENCH94["images"] / AIRBENCH94["seconds"]
    numbers["airbench94_images_per_s"] = air
    by = {(c["model"], c["setting"]): c["ms_per_step"] for c in numbers["cases"]}
    ratio_lines = []
    for setting, *_ in settings:
        binary, twin = by.get((models[1][0], setting)), by.get((models[2][0], setting))
        if binary and twin:
            ratio_lines.append(f"- xnor_resnet18 w{width} / its float twin, {setting}: **{binary / twin:.2f}x** step time")
    lines = [f"Batch {batch}, random uint8 {size}x{size} RGB images; a step = crop+flip+normalise on the device, "
             f"forward, cross-entropy, backward, SGD (Nesterov); median of the timed steps after 2 warm-ups; "
             f"TF32 off; torch.compile backend {backend}.", "",
             "| model | setting | ms / step | images / s | first step (s) |", "|---|---|--:|--:|--:|", *rows, "",
             *ratio_lines, "",
             f"airbench94 (Jordan 2024): 94 % on CIFAR-10 in {AIRBENCH94['seconds']} s on an {AIRBENCH94['gpu']}, "
             f"≈ {AIRBENCH94['epochs']} epochs of {AIRBENCH94['images']:,} images: ≈ {air:,.0f} training images/s "
             "(its own smaller network, whole run including evaluation; a reference point, not the same model)."]
    return lines, numbers


def _records_units(run_dir: Path) -> int:
    from lowbit.runs import read_records

    path = run_dir / "records.csv"
    return len({r["unit"] for r in read_records(path)}) if path.is_file() else 0


def probe_section(args: argparse.Namespace, device: torch.device, budget: Budget) -> tuple:
    """The built-in default probe on the GPU, then (time allowing) on this machine's CPU."""
    runs = args.work / "probe-runs"
    log = args.out / "probe.log"
    small = ["probe.dims=[2,4]", "probe.inits=1", "probe.batches=1", "task.batch_size=512"] if args.quick else []
    numbers, rows = {}, []
    for where in ([device.type] if device.type == "cpu" else ["cuda", "cpu"]):
        if not budget.allows(15):
            rows.append(f"| {where} | skipped: out of time | |")
            continue
        result = run_logged([sys.executable, "-m", "lowbit", "probe", *small, "--device", where, "--runs-dir",
                             str(runs / where)], log, min(args.section_cap, budget.left() - 10))
        numbers[where] = result
        status = "cut off" if result["cut_off"] else ("ok" if result["rc"] == 0 else f"exit {result['rc']}")
        rows.append(f"| {where} | {result['seconds']:.1f} | {status} |")
    lines = ["`lowbit probe` with no config (the built-in default, every estimator family), wall-clock seconds "
             "including start-up:", "", "| device | seconds | status |", "|---|--:|---|", *rows]
    if numbers.get("cuda", {}).get("rc") == 0 and numbers.get("cpu", {}).get("rc") == 0:
        lines += ["", f"GPU vs this machine's {os.cpu_count()} CPU cores: "
                      f"**{numbers['cpu']['seconds'] / numbers['cuda']['seconds']:.1f}x**"]
    return lines, numbers


def cell_config(quick: bool) -> Dict[str, Any]:
    """Cell c015 (dim 64, init 0) of the notes' protocol as a probe config (``--quick``: a dim-4 cell, small)."""
    from lowbit.sweep.cells import config_data
    from lowbit.sweep.driver import load_sweep_spec, plan_sweep

    path = SRC / "lowbit" / "configs" / "sweep-toy-protocol.yaml"
    _, _, _, cells = plan_sweep(load_sweep_spec(path), path.parent)
    wanted = {"dim": 4 if quick else 64, "init": 0}
    cell = next(c for c in cells if c.varied == wanted)
    data = config_data(cell)
    if quick:
        data["task"]["batch_size"], data["probe"]["batches"] = 512, 2
        data.setdefault("measure", {})["lr_grid"] = {"min": 1.0e-4, "max": 0.1, "num": 20, "scale": "linear"}
        data["estimators"] = [e for e in data["estimators"] if e["name"] != "nes"] + [
            {"name": "nes", "population": [16, 32], "sigma": 0.1, "natural": False, "label": "NES"}]
    return {"id": cell.id, "label": cell.label, "config": data}


def cell_section(args: argparse.Namespace, device: torch.device, budget: Budget) -> tuple:
    import yaml

    from lowbit.config import from_dict
    from lowbit.probe.config import ProbeConfig
    from lowbit.probe.plan import plan_units, probed_layers

    cell = cell_config(args.quick)
    path = args.work / f"cell-{cell['id']}.yaml"
    path.write_text(yaml.safe_dump(cell["config"], sort_keys=False))
    config = from_dict(ProbeConfig, cell["config"])
    planned = len(plan_units(config, probed_layers(config)))
    runs = args.work / "cell-runs"
    allowed = min(args.cell_cap, budget.left() - 10)
    result = run_logged([sys.executable, "-m", "lowbit", "probe", str(path), "--device", device.type, "--runs-dir", str(runs)],
                        args.out / "cell.log", allowed)
    run_dirs = sorted(runs.glob("*/")) if runs.is_dir() else []
    done = _records_units(run_dirs[-1]) if run_dirs else 0
    numbers = {**result, "cell": cell["id"], "label": cell["label"], "units_done": done, "units_planned": planned}
    estimates = re.findall(r"total ~([^\n]+)", (args.out / "cell.log").read_text())
    if estimates:  # the probe times one unit's parts on the device before it starts: there even if no unit ends
        numbers["probe_estimate"] = estimates[-1].strip()
    if done:
        numbers["cell_seconds_estimate"] = result["seconds"] / done * planned
    state = ("whole cell" if done == planned and result["rc"] == 0 else f"{done} of {planned} units in the {allowed:.0f} s given")
    lines = [f"Cell {cell['id']} ({cell['label']}) of configs/sweep-toy-protocol.yaml ({planned} units: batches of "
             f"{cell['config']['task']['batch_size']:,} samples, CDG, four STEs, NES 500/5 000/50 000, a "
             f"{cell['config']['measure']['lr_grid']['num']:,}-point lr scan per estimate) on {device.type}: "
             f"{state}, {result['seconds']:.0f} s wall-clock including start-up."]
    if done:
        lines.append(f"The whole cell at that rate: **≈ {numbers['cell_seconds_estimate'] / 60:.1f} min** "
                     "(the notes' protocol is 18 such cells, dims 2-64; the dim-64 ones cost the most).")
    if "probe_estimate" in numbers:
        lines.append(f"The probe's own estimate before it started (its parts timed on {device.type}): ~{numbers['probe_estimate']}.")
    return lines, numbers


def ddp_section(args: argparse.Namespace, device: torch.device, budget: Budget) -> tuple:
    """nccl DDP through ``torchrun -m lowbit train``: 2 ranks == 1 process, or the error for too few GPUs."""
    from lowbit.runs import read_records

    log = args.out / "ddp.log"
    tiny = ["data.train_subset=256", "data.test_subset=128", "data.batch_size=64", "run.epochs=2", "run.tensorboard=false",
            "augment.crop_padding=0", "model.name=resnet9", "model.width_mult=0.25", "data.image_size=null",
            "model.sync_bn=true", f"run.device={device.type}"]
    runs = args.work / "ddp-runs"
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    ranks = 2
    torchrun = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={ranks}", "--master_addr=127.0.0.1",
                "--master_port=29517", "-m", "lowbit", "train"]
    numbers: Dict[str, Any] = {"gpus": gpus}
    if device.type == "cuda" and gpus < ranks:
        result = run_logged(torchrun + [*tiny, "--runs-dir", str(runs / "two")], log, min(90.0, budget.left() - 5))
        text = log.read_text()
        clear = "CUDA device" in text and "--nproc_per_node" in text
        numbers.update(result, clear_error=clear)
        return [f"One GPU: `torchrun --nproc_per_node 2 -m lowbit train ... run.device=cuda` exits {result['rc']} "
                f"with {'the' if clear else '**no**'} one-line error naming the GPU count (ddp.log). 2-rank nccl "
                "needs 2 GPUs: not measured."], numbers
    single = run_logged([sys.executable, "-m", "lowbit", "train", *tiny, "--runs-dir", str(runs / "one")], log,
                        min(120.0, budget.left() - 5))
    double = run_logged(torchrun + [*tiny, "--runs-dir", str(runs / "two")], log, min(120.0, budget.left() - 5))
    numbers.update(single=single, double=double)
    finals = []
    for name in ("one", "two"):
        dirs = sorted((runs / name).glob("*/"))
        rows = read_records(dirs[-1] / "metrics.csv") if dirs and (dirs[-1] / "metrics.csv").is_file() else []
        finals.append(rows[-1] if rows else None)
    if all(finals):
        difference = abs(finals[0]["test_loss"] - finals[1]["test_loss"])
        numbers["test_loss_difference"] = difference
        verdict = f"test loss after 2 epochs differs by {difference:.2e} ({'equal within float tolerance' if difference < 1e-3 else 'NOT equal'})"
    else:
        verdict = f"a run failed (rc {single['rc']} / {double['rc']}; ddp.log)"
    backend = "nccl" if device.type == "cuda" else "gloo"
    return [f"resnet9 (width 0.25, SyncBatchNorm) on digits, 1 process vs `torchrun --nproc_per_node 2` ({backend}): "
            f"{verdict}; {single['seconds']:.0f} s vs {double['seconds']:.0f} s."], numbers


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_check.md, gpu_check.json and the logs")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder for run directories (default: a temp dir)")
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu (to check the script itself)")
    parser.add_argument("--budget", type=float, default=450.0, help="seconds for the whole check (default 450)")
    parser.add_argument("--section-cap", type=float, default=180.0, help="the most seconds one subprocess section gets")
    parser.add_argument("--cell-cap", type=float, default=90.0, help="the most seconds the dim-64 cell gets (default 90)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (checks the script on a CPU in seconds)")
    args = parser.parse_args(argv)
    wanted = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(wanted) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {', '.join(SECTIONS)}")
    from lowbit.devices import resolve_device

    try:
        device = resolve_device(args.device, "--device")
    except ValueError as error:
        parser.error(str(error))
    budget = Budget(args.budget)
    args.out.mkdir(parents=True, exist_ok=True)
    args.work = args.work or Path(tempfile.mkdtemp(prefix="lowbit-gpu-check-"))
    args.work.mkdir(parents=True, exist_ok=True)
    report = Report(args.out, argv if argv is not None else sys.argv[1:])
    needs = {"machine": 1, "peak": 10, "cuda_tests": 30, "nes": 20, "train_steps": 40, "probe": 20, "cell": 40, "ddp": 30}
    peak: Dict[str, Any] = {}
    for section in SECTIONS:
        if section not in wanted:
            continue
        if not budget.allows(needs[section] * (0.1 if args.quick else 1)):
            report.add(section, [f"skipped: {budget.left():.0f} s left, it needs ~{needs[section]} s"], {"skipped": True})
            continue
        t0 = time.monotonic()
        print(f"[gpu_check] {section} ({budget.left():.0f} s left)", flush=True)
        try:
            if section == "machine":
                lines, numbers = machine_section(args, device)
            elif section == "peak":
                lines, numbers = peak_section(args, device)
                peak = numbers
            elif section == "cuda_tests":
                lines, numbers = cuda_tests_section(args, device, budget)
            elif section == "nes":
                lines, numbers = nes_section(args, device, budget, peak)
            elif section == "train_steps":
                lines, numbers = train_steps_section(args, device, budget)
            elif section == "probe":
                lines, numbers = probe_section(args, device, budget)
            elif section == "cell":
                lines, numbers = cell_section(args, device, budget)
            else:
                lines, numbers = ddp_section(args, device, budget)
        except Exception as error:  # one section's failure must not lose the others' figures
            lines, numbers = [f"**failed**: {type(error).__name__}: {error}"], {"error": repr(error)}
        numbers["section_seconds"] = time.monotonic() - t0
        report.add(section, lines, numbers)
        print("\n".join(lines), flush=True)
    print(f"[gpu_check] done; {budget.left():.0f} s of the budget left; {args.out / 'gpu_check.md'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
