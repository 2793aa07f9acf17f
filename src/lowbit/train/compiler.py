"""``run.compile``: ``torch.compile`` of the module the training step calls, and its failures in one line.

What is compiled is the forward the step calls: the model, or under torchrun its
``DistributedDataParallel`` wrapper (PyTorch compiles DDP-wrapped modules, its
DDPOptimizer splitting the graph at the gradient buckets), after ``model.to``
the device and channels_last. Everything else keeps the plain module: the
optimizer, checkpoints and ``state_dict`` (so no ``_orig_mod.`` prefixes: a
compiled run resumes an eager run's checkpoint and the other way round),
evaluation, the flip-ratio tracker, the gradient probe, ``model.yaml``; and the
steps that sample gradient statistics call the plain module (their hooks, attached
for that step only, would be invisible to a graph traced before).

The numbers are eager's up to float rounding (inductor reorders and fuses float
operations). Two settings keep it that way:

- ``fallback_random``: inductor's own generator would draw other random numbers
  than ATen's for dropout, RReLU or stochastic rounding; with this option the
  compiled graph calls ATen's (the same draws from the same seeded generator), so
  a run may switch ``run.compile`` on resume. (Before torch 2.13 — seen on
  2.11 and 2.12 — inductor's RReLU draws its slopes otherwise even so, and the
  compiled run's slopes differ from eager's; :class:`CompileNumericsWarning`
  says so. 2.13 draws eager's.)
- ``run.deterministic: true`` (the default) sets inductor's ``deterministic``
  flag too (``torch.use_deterministic_algorithms``), which skips autotuning
  choices that change numerics; ``run.deterministic=false`` gives max-autotune
  its full choice.

Failures: :func:`check_compile` refuses, before any data is read, a backend that
is not registered, an inductor without its code generator (a C++ compiler on
CPU, triton on CUDA) and a Python that dynamo does not support.
:func:`compile_errors` turns an exception of the compiler during a step (the
first step compiles) into :class:`CompileFailed`, one line naming the mode and
the fix, raised before that step changes any weight.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Iterator, Optional, Union

import torch
from torch import nn

from lowbit.train.config import RunConfig

__all__ = ["CompileFailed", "CompileNumericsWarning", "check_compile", "compile_errors", "compile_module", "describe_compile", "parse_compile_flag"]


class CompileFailed(RuntimeError):
    """torch.compile raised during a training step; the message names ``run.compile`` and how to turn it off."""


class CompileNumericsWarning(UserWarning):
    """The compiled step will not draw eager's random numbers (a known bug of the installed torch)."""


def _rrelu_draws_differ() -> bool:
    """Whether this torch's inductor draws RReLU's slopes otherwise than eager (seen on 2.11 and 2.12)."""
    return torch.__version__ < (2, 13)


def describe_compile(compile: Union[bool, str, None], backend: Optional[str]) -> str:
    """``run.compile`` and ``run.compile_backend`` in words: ``torch.compile (max-autotune, inductor)``, or
    ``eager (no torch.compile)`` (also for None: a run from before the option)."""
    if compile is None or compile is False:
        return "eager (no torch.compile)"
    return f"torch.compile ({'default' if compile is True else compile}, {backend or 'inductor'})"


def parse_compile_flag(text: str) -> Union[bool, str]:
    """``--compile TEXT`` as a ``run.compile`` value: true / false (also on / off, yes / no) or a mode name."""
    lowered = text.strip().lower()
    if lowered in ("true", "on", "yes", "1"):
        return True
    if lowered in ("false", "off", "no", "0"):
        return False
    return lowered  # a mode, checked by RunConfig with the valid names


def _setting(run: RunConfig) -> str:
    backend = "" if run.compile_backend == "inductor" else f" run.compile_backend={run.compile_backend}"
    return f"run.compile={str(run.compile).lower() if isinstance(run.compile, bool) else run.compile}{backend}"


def check_compile(run: RunConfig, device: torch.device) -> None:
    """Raise ``ValueError`` when ``run.compile`` cannot work on ``device`` here; nothing when it is off.

    Loads the compiler (torch._dynamo, and inductor's config for inductor), so that the loop's
    deterministic switch reaches inductor's flag too (``lowbit.train.loop._set_deterministic``).
    """
    if run.compile_mode is None:
        return
    fix = "or set run.compile=false"
    try:
        from torch._dynamo.eval_frame import check_if_dynamo_supported

        check_if_dynamo_supported()
    except (ImportError, RuntimeError) as error:
        raise ValueError(f"{_setting(run)}: torch.compile is not available here ({error}); set run.compile=false") from None
    import torch._dynamo

    if run.compile_backend not in torch._dynamo.list_backends(exclude_tags=()):  # debug backends included
        from lowbit.registry import unknown_name_message

        shown = set(torch._dynamo.list_backends()) | {"aot_eager", "eager"}  # not torch's testing-only ones
        raise ValueError(f"run.compile_backend: {unknown_name_message('torch._dynamo backend', run.compile_backend, shown)}")
    if run.compile_backend != "inductor":
        return
    import torch._inductor.config  # noqa: F401 (loaded: see the docstring)

    if device.type == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            raise ValueError(
                f"{_setting(run)} on {device}: inductor generates triton kernels on CUDA and triton is not "
                f"installed; pip install triton (the version your torch names), use run.compile_backend=aot_eager, {fix}"
            )
    elif device.type == "cpu":
        from torch._inductor import cpp_builder

        try:
            cpp_builder.get_cpp_compiler()
        except Exception as error:  # noqa: BLE001 - torch's InvalidCxxCompiler and whatever a future torch raises
            raise ValueError(
                f"{_setting(run)} on the CPU: inductor builds C++ kernels and found no C++ compiler "
                f"({_first_line(error)}); install one (e.g. apt-get install g++), use run.compile_backend=aot_eager, {fix}"
            ) from None


def compile_module(module: nn.Module, run: RunConfig) -> nn.Module:
    """``torch.compile(module)`` per ``run.compile`` / ``run.compile_backend`` (module docstring)."""
    mode = run.compile_mode
    if mode is None:
        raise ValueError("compile_module needs run.compile set (true or a mode), got false")
    if run.compile_backend != "inductor":
        return torch.compile(module, backend=run.compile_backend)
    from torch._inductor import list_mode_options

    if _rrelu_draws_differ() and any(isinstance(m, nn.RReLU) for m in module.modules()):
        warnings.warn(
            f"{_setting(run)} with RReLU on torch {torch.__version__}: this torch's inductor draws RReLU's random "
            "slopes otherwise than eager does (fallback_random notwithstanding), so the compiled run follows "
            "other, equally valid slopes than an eager run and a resume that switches run.compile is not exact; "
            "torch >= 2.13 draws eager's, or use run.compile_backend=aot_eager",
            CompileNumericsWarning, stacklevel=2,
        )
    # a mode and options cannot both be given: the mode's options, plus ATen's random numbers
    options = {**list_mode_options(mode), "fallback_random": True}
    return torch.compile(module, backend="inductor", options=options)


@contextlib.contextmanager
def compile_errors(run: RunConfig, step: int, run_dir: Path) -> Iterator[None]:
    """Inside: an exception of torch's compiler (dynamo, AOTAutograd, inductor) becomes :class:`CompileFailed`.

    Wrap the compiled forward and the backward (AOTAutograd may compile the backward at its first call).
    Errors of the model's own code are dynamo's too when it traces them; they name the failing line, which
    the message keeps. ``step``: optimizer steps done before this one. Nothing to do when run.compile is off.
    """
    if run.compile_mode is None:
        yield
        return
    from torch._dynamo.exc import TorchDynamoException

    try:
        yield
    except TorchDynamoException as error:
        raise CompileFailed(
            f"{_setting(run)}: torch.compile failed at step {step + 1} ({_cause(error)}); set run.compile=false: "
            f"`lowbit train --resume {run_dir} --compile false` continues this run eagerly (--debug shows torch's trace)"
        ) from error


def _cause(error: BaseException) -> str:
    """The innermost exception dynamo wrapped (a backend's own error), as ``Type: first line``."""
    inner = error
    for _ in range(8):  # BackendCompilerFailed keeps the backend's error as inner_exception / __cause__
        nested = getattr(inner, "inner_exception", None) or inner.__cause__
        if nested is None or nested is inner:
            break
        inner = nested
    text = f"{type(inner).__name__}: {_first_line(inner)}"
    return text if inner is error else f"{type(error).__name__} from {text}"


def _first_line(error: BaseException, limit: int = 400) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    text = lines[0] if lines else type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
