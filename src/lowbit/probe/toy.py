"""The teacher–student toy of the gradient notes, with exact fast paths for the probe.

Task (notes 2021-04-30 / 05-17, BinaryDuo setting): a teacher and a student,
both ``toy_mlp(dim, depth)`` (bias-free dim × dim layers ``layers.{l}.weight``,
l = 0..depth−1, activation between layers, none after the last), initialised
independently from ``seed``; inputs x ~ N(0, I_dim); labels y = teacher(x);
loss L = mean over the batch and the dim outputs of (student(x) − y)²
(``F.mse_loss``).

**Teacher rule.** The teacher is the *binary* MLP of the notes (sign
activations) whatever the student's activation, so that at a given seed every
student — sign with any surrogate, step01, uniform_act, or the full-precision
control ``"none"`` — sees the same teacher, data and initial weights, and a
sweep over ``act`` changes only the student. ``teacher_act="same"`` copies the
student's activation instead (a realisable task for every student); any
quantizer spec is accepted too.

**Randomness.** Sub-seeds come from ``numpy.random.SeedSequence([seed, stream,
...])``: teacher init, student init, the probe batch k (``objective(batch=k)``)
and the pretraining batch t are separate streams, so batch k is the same
whatever was done before, and pretraining never sees a probe batch. Global RNG
state is left untouched.

**Fast paths** (``ToyObjective``), exact up to floating-point rounding
(compare in float64: in float32 a sample whose pre-activation lies within
rounding of 0 can flip differently in any two evaluation orders, including two
"naive" ones):

- ``losses``: the population is evaluated with batched matmuls in chunks sized
  to stay in cache; layers before the first studied one are computed once,
  and sign activations stay 0/1 masks compared against shifted thresholds.
- ``coordinate_deltas`` (CDG, DG): moving W_l[i, j] by s shifts the
  pre-activation z_l[:, i] by s·u[:, j] (u the layer's input). Only samples
  whose activation at unit i changes move the loss, and the new loss of such a
  sample depends only on (sample, unit, new level), not on j: it is computed
  once per (sample, unit, level) by a rank-one update of the next layer. Then
  ΔL(i, j) = (1/B) Σ_n D[n, i, new level(n, i, j)], with D the per-sample loss
  change: an elementwise pass over (B, d, d) for the first layer (continuous x),
  a matmul per input level for later layers (quantized inputs), and a closed
  form for the last layer and for linear networks.
- ``line_losses`` (lr scans): along w − lr·d the pre-activations of a layer
  whose input is fixed are a − lr·b, so every quantized unit changes level at
  most (levels − 1) times; each sample's loss is piecewise constant in lr
  between those breakpoints (found by binary search on the lr grid with the
  same arithmetic, so ties at 0 follow sign(0) = +1) and quadratic in lr on
  the last layer. A direction on several layers refines the pieces layer by
  layer (within a piece every layer's input is constant). Each piece is
  evaluated once and accumulated over the grid with difference arrays. For linear networks (``act="none"``) L(lr) is a
  polynomial of degree 2·(layers touched), computed exactly from its
  coefficients. The scan runs in float64 whatever the objective's dtype, so
  it is the exact-arithmetic L(w − lr·d) of the objective's weights and data.

All fast paths split their work into chunks evaluated on up to
``torch.get_num_threads()`` worker threads (:func:`map_parallel`); results do
not depend on the number of workers.
"""

from __future__ import annotations

import math
import operator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from lowbit.estimators.base import GradientEstimator, get_estimator
from lowbit.estimators.objective import (
    Objective,
    Step,
    SurrogateSpec,
    as_lr_tensor,
    checked_direction,
    is_sign_activation,
    resolve_surrogate,
    stacked_size,
    step_values,
    with_surrogate,
)

# Independent random streams of one task (see the module docstring).
STREAM_TEACHER, STREAM_STUDENT, STREAM_PROBE, STREAM_TRAIN, STREAM_PRETRAIN_ESTIMATOR = range(5)

TEACHER_ACT = "ste"  # the binary teacher of the notes; only its forward (sign) matters

PRETRAIN_OPTIMIZERS = ("adam", "sgd", "sgdm")

WEIGHT_KINDS = ("real", "binary")
BINARY_WEIGHT_QUANTIZER = "xnor_weight"  # the student's weights with weights="binary" (XNOR-Net, per output row)

# Working-set targets of the fast paths, in numbers (float32: 4 bytes each).
# Population chunks of 4096 samples x (2^19 / (4096 d)) members: 2 MiB per intermediate, e.g.
# 2 members at dim 64, 8 at dim 16. Measured on the 2-core EPYC of BENCHMARKS.md: one member
# over the whole batch is up to 2x slower at dim 64 (GEMMs of one member are too narrow), and
# chunks of 2^21+ numbers fall out of cache (2-5x slower at dims 16-64).
CACHE_NUMBERS = 1 << 19
CHUNK_ROWS = 4096
# The CDG first-layer pass materialises (d, chunk, d) masks: 2^21 numbers (8 MiB).
MASK_NUMBERS = 1 << 21
# Rows of the lr-scan segments processed at once (each row: one sample on one lr interval).
SEGMENT_ROWS = 4096


def map_parallel(fn: Callable[[Any], Any], items: Iterable[Any]) -> List[Any]:
    """``[fn(item) for item in items]`` on up to ``torch.get_num_threads()`` Python threads.

    Coarse-grained parallelism: each worker runs single-threaded torch ops on
    its own chunks (torch releases the GIL). On a shared CPU this is far more
    robust than torch's intra-op threads, which meet at a barrier after every
    op: measured here with other processes runnable, a 0.1 ms op took ~8 ms
    with 2 intra-op threads (a scheduler time slice), while independent
    workers only slow down in proportion to the load. torch's thread count is
    process-global, so it is set to 1 for the duration and restored; inside a
    worker (1 thread) this runs serially. Results come back in item order and
    do not depend on the number of workers.
    """
    items = list(items)
    threads = torch.get_num_threads()
    workers = min(len(items), threads)
    if workers <= 1:
        return [fn(item) for item in items]
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(fn, items))
    finally:
        torch.set_num_threads(threads)


def layer_name(index: int) -> str:
    return f"layers.{index}.weight"


def sub_seed(seed: int, *stream: int) -> int:
    """A 63-bit seed for one random stream of the task, from ``SeedSequence([seed, *stream])``."""
    state = np.random.SeedSequence([seed, *stream]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


# --- the activation ------------------------------------------------------------------


class ToyActivation:
    """The student's activation: the quantizer module plus what the fast paths need.

    ``kind``: ``"identity"`` (no activation), ``"sign"`` (forward sign(z),
    sign(0) = +1), ``"levels"`` (an elementwise monotone step function onto the
    sorted ``levels``: step01, ste_heaviside, uniform_act, dorefa, ste_tern with
    a fixed threshold) or ``"generic"`` (anything else: generic paths only).
    """

    def __init__(self, spec: Any) -> None:
        from lowbit.nn import make_quantizer
        from lowbit.quant import DoReFa, SteHeaviside, SteTern, Step01, StochasticSign, UniformActivation

        module = make_quantizer(spec)
        if isinstance(module, StochasticSign):
            raise ValueError(
                f"act {spec!r} is random: the toy's loss must be a deterministic function of the weights "
                "(use a deterministic activation)"
            )
        self.spec = spec
        self.module = module
        self.levels: Optional[Tuple[float, ...]] = None
        if module is None:
            self.kind = "identity"
        elif is_sign_activation(module):
            self.kind, self.levels = "sign", (-1.0, 1.0)
        elif isinstance(module, (Step01, SteHeaviside)):
            self.kind, self.levels = "levels", (0.0, 1.0)
        elif isinstance(module, UniformActivation):
            self.kind, self._steps = "levels", module.levels
        elif isinstance(module, DoReFa):
            self.kind, self._steps = "levels", 2**module.k_bit - 1
        elif isinstance(module, SteTern) and module.threshold_mode == "fixed":
            self.kind, self.levels = "levels", (-1.0, 0.0, 1.0)
        else:
            self.kind = "generic"

    def level_values(self, dtype: torch.dtype) -> torch.Tensor:
        """The sorted output values, computed as the quantizer computes them (k/n in ``dtype``)."""
        if self.levels is not None:
            return torch.tensor(self.levels, dtype=dtype)
        return torch.arange(self._steps + 1, dtype=dtype) / self._steps

    def __call__(self, z: torch.Tensor, surrogate: Optional[Any] = None) -> torch.Tensor:
        """The differentiable activation (the quantizer's own backward, or the surrogate's)."""
        if self.module is None:
            return z
        if surrogate is None:
            return self.module(z)
        if self.kind != "sign":
            raise ValueError(
                f"a surrogate replaces the backward of a sign activation; the student's act {self.spec!r} "
                "is not sign-family (use surrogate=None for its own backward)"
            )
        return with_surrogate(z, self.module, surrogate)

    def fast(self, z: torch.Tensor) -> torch.Tensor:
        """The forward only (call under ``torch.no_grad``); for sign: where(z >= 0, 1, −1)."""
        if self.kind == "identity":
            return z
        if self.kind == "sign":
            # 1{z >= 0}·2 − 1, written as a float comparison: about 20× faster on CPU than
            # torch.where(z >= 0, 1., −1.), whose bool intermediate takes a slow path.
            return torch.ge(z, 0, out=torch.empty_like(z)).mul_(2.0).sub_(1.0)
        return self.module(z)

    def fast_(self, z: torch.Tensor) -> torch.Tensor:
        """``fast`` that may overwrite ``z`` (saves a pass of memory traffic on big chunks)."""
        if self.kind == "sign":
            return z.ge_(0).mul_(2.0).sub_(1.0)  # 1{z >= 0}·2 − 1 = sign(z), sign(0) = +1, NaN -> −1
        return self.fast(z)

    def level_index(self, values: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
        """Index into ``levels`` of activation outputs ``values`` (exact matches)."""
        if self.kind == "sign":
            return (values > 0).long()
        return torch.bucketize(values, levels)


# --- the task ------------------------------------------------------------------------


def _check_int(name: str, value: Any, minimum: int) -> Optional[str]:
    try:
        as_int = operator.index(value)
    except TypeError:
        return f"{name} must be an integer >= {minimum}, got {value!r}"
    if isinstance(value, bool) or as_int < minimum:
        return f"{name} must be an integer >= {minimum}, got {value!r}"
    return None


class ToyTask:
    """The teacher–student toy (module docstring): build Objectives on batches, pretrain the student.

    Args:
        dim: width d >= 1 of every layer (inputs, hidden units, outputs).
        depth: number of layers >= 1.
        act: the student's activation: a quantizer name (any sign surrogate:
            ``"ste"``, ``"ste_clipped"``, ``"swish_sign"``, ...; ``"step01"``,
            ``"uniform_act"``), a dict ``{"name": ..., **params}``, or
            ``"none"`` (the linear full-precision control).
        batch_size: samples per probe batch (the notes: 16000).
        seed: integer >= 0; everything random derives from it.
        teacher_act: the teacher's activation (default: sign, the binary
            teacher; ``"same"``: the student's).
        dtype: float32 (default) or float64 (exact comparisons).
        weights: the student's weights: ``"real"`` (default) or ``"binary"``,
            XNOR weights α_i sign(W_ij) with α_i = mean_j |W_ij| on latent
            float weights W (``lowbit.probe.toy_binary``). The teacher and the
            latent initial weights are the same either way.

    Attributes: ``teacher``, ``student`` (``ToyMLP`` modules; pretraining
    updates ``student`` in place), ``pretrained_steps``.
    """

    def __init__(
        self,
        dim: int,
        depth: int = 3,
        act: Any = "ste",
        batch_size: int = 16000,
        seed: int = 0,
        teacher_act: Any = TEACHER_ACT,
        dtype: torch.dtype = torch.float32,
        weights: str = "real",
    ) -> None:
        errors = [
            e
            for e in (
                _check_int("dim", dim, 1),
                _check_int("depth", depth, 1),
                _check_int("batch_size", batch_size, 1),
                _check_int("seed", seed, 0),
            )
            if e
        ]
        if dtype not in (torch.float32, torch.float64):
            errors.append(f"dtype must be torch.float32 or torch.float64, got {dtype!r}")
        if weights not in WEIGHT_KINDS:
            errors.append(f"weights must be one of {', '.join(map(repr, WEIGHT_KINDS))}, got {weights!r}")
        if errors:
            raise ValueError("; ".join(errors))
        self.dim, self.depth, self.batch_size, self.seed, self.dtype = int(dim), int(depth), int(batch_size), int(seed), dtype
        self.act_spec = act
        self.weights = weights
        self.activation = ToyActivation(act)
        self.teacher_act_spec = act if isinstance(teacher_act, str) and teacher_act == "same" else teacher_act
        teacher_activation = ToyActivation(self.teacher_act_spec)  # validates (e.g. no stochastic teacher)
        self.teacher = self._init_mlp(self.teacher_act_spec, STREAM_TEACHER)
        self.student = self._init_mlp(act, STREAM_STUDENT, binary=weights == "binary")
        self.teacher.requires_grad_(False)
        del teacher_activation
        self.pretrained_steps = 0

    def _init_mlp(self, act: Any, stream: int, binary: bool = False) -> torch.nn.Module:
        from lowbit.models import create_model

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sub_seed(self.seed, stream))
            quantizer = BINARY_WEIGHT_QUANTIZER if binary else None
            model = create_model("toy_mlp", dim=self.dim, depth=self.depth, act=act, weight_quantizer=quantizer)
        return model.to(self.dtype)

    # --- data ---

    def batch(self, index: int = 0, batch_size: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Probe batch ``index``: (x, y), x ~ N(0, I) of shape (batch_size, dim), y = teacher(x)."""
        error = _check_int("batch", index, 0)
        if error:
            raise ValueError(error)
        return self._make_batch(STREAM_PROBE, int(index), batch_size or self.batch_size)

    def _make_batch(self, stream: int, index: int, size: int) -> Tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(sub_seed(self.seed, stream, index))
        x = torch.randn(size, self.dim, generator=generator, dtype=self.dtype)  # (B, d)
        with torch.no_grad():
            y = self.teacher(x)  # (B, d)
        return x, y

    # --- objectives ---

    def resolve_layers(self, layers: Union[str, int, Sequence[int]] = "all") -> List[int]:
        """Layer indices from ``"all"``, an index or a list; ValueError naming the valid range."""
        if isinstance(layers, str):
            if layers != "all":
                raise ValueError(f"layers must be 'all' or layer indices in 0..{self.depth - 1}, got {layers!r}")
            return list(range(self.depth))
        if isinstance(layers, int) and not isinstance(layers, bool):
            layers = [layers]
        indices = list(layers)
        bad = [i for i in indices if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < self.depth]
        if bad or not indices:
            raise ValueError(
                f"layers {bad if bad else indices!r} do not exist: the toy MLP has layers 0..{self.depth - 1} "
                f"(depth={self.depth})"
            )
        return sorted(set(indices))

    def student_weights(self) -> List[torch.Tensor]:
        """Detached copies of the student's layer weights, in order."""
        return [layer.weight.detach().clone() for layer in self.student.layers]

    def objective(self, layers: Union[str, int, Sequence[int]] = "all", batch: int = 0) -> "ToyObjective":
        """The Objective on probe batch ``batch``, studying the weights of ``layers``.

        It snapshots the student's current weights: later pretraining does not change it.
        """
        indices = self.resolve_layers(layers)
        x, y = self.batch(batch)
        return self._objective(x, y, indices)

    def _objective(self, x: torch.Tensor, y: torch.Tensor, indices: Sequence[int]) -> Objective:
        if self.weights == "binary":
            from lowbit.probe.toy_binary import BinaryWeightToyObjective

            return BinaryWeightToyObjective(self.student_weights(), self.activation, x, y, indices)
        return ToyObjective(self.student_weights(), self.activation, x, y, indices)

    # --- pretraining ---

    def pretrain(
        self,
        steps: int = 100,
        batch_size: Optional[int] = None,
        estimator: Union[None, str, Mapping[str, Any], GradientEstimator] = None,
        optimizer: str = "adam",
        lr: float = 1e-3,
        layers: Union[str, Sequence[int]] = "all",
    ) -> List[float]:
        """Train the student before measuring; returns the loss of every step's batch (before the step).

        Each step draws a fresh training batch (stream separate from the probe
        batches; successive calls continue it), estimates ĝ and applies the
        optimizer (``adam``, ``sgd``, ``sgdm`` = momentum 0.9) with ĝ as the
        gradient. ``estimator=None`` is backpropagation through the student's
        own activation backward (for the default sign activation: the STE);
        a name, ``{"name": ..., **params}`` or an estimator instance selects
        another. The notes pretrain 2000 steps of 16000 samples with Adam; the
        defaults here are small for CPU.
        """
        from lowbit.estimators.multistep import make_optimizer
        from lowbit.estimators.ste import STE

        errors = [e for e in (_check_int("steps", steps, 0), _check_int("batch_size", batch_size or 1, 1)) if e]
        if optimizer not in PRETRAIN_OPTIMIZERS:
            errors.append(f"optimizer must be one of {', '.join(PRETRAIN_OPTIMIZERS)}, got {optimizer!r}")
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < math.inf:
            errors.append(f"lr must be a finite number > 0, got {lr!r}")
        if errors:
            raise ValueError("; ".join(errors))
        indices = self.resolve_layers(layers)
        if estimator is None:
            estimator = STE(surrogate=None)
        elif isinstance(estimator, str):
            estimator = get_estimator(estimator)
        elif isinstance(estimator, Mapping):
            spec = dict(estimator)
            estimator = get_estimator(spec.pop("name"), **spec)
        size = int(batch_size or self.batch_size)
        weights = [self.student.layers[i].weight for i in indices]
        opt = make_optimizer(optimizer, float(lr))
        generator = torch.Generator().manual_seed(sub_seed(self.seed, STREAM_PRETRAIN_ESTIMATOR))
        history: List[float] = []
        for _ in range(int(steps)):
            x, y = self._make_batch(STREAM_TRAIN, self.pretrained_steps, size)
            objective = self._objective(x, y, indices)
            if isinstance(estimator, STE):
                leaves = {k: v.clone().requires_grad_(True) for k, v in objective.params.items()}
                loss = objective.loss(leaves, surrogate=estimator._surrogate)
                grads = dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()))))
                history.append(float(loss.detach()))
            else:
                history.append(float(objective.loss()))
                grads = estimator.estimate(objective, generator)
            opt.step(weights, [grads[layer_name(i)] for i in indices])
            self.pretrained_steps += 1
        return history

    def config(self) -> Dict[str, Any]:
        return {
            "dim": self.dim,
            "depth": self.depth,
            "act": self.act_spec,
            "teacher_act": self.teacher_act_spec,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "dtype": str(self.dtype).replace("torch.", ""),
            "weights": self.weights,
            "pretrained_steps": self.pretrained_steps,
        }

    def __repr__(self) -> str:
        return "ToyTask(" + ", ".join(f"{k}={v!r}" for k, v in self.config().items()) + ")"


# --- the objective with fast paths ---------------------------------------------------


class ToyObjective(Objective):
    """The toy's Objective on one batch; the studied parameters are some layers' weights.

    Args:
        weights: every layer's weight (d, d), in order (the unstudied ones stay fixed).
        activation: a :class:`ToyActivation`.
        x, y: the batch, (B, d) each.
        layers: indices of the studied layers (names ``layers.{l}.weight``).
    """

    def __init__(
        self,
        weights: Sequence[torch.Tensor],
        activation: ToyActivation,
        x: torch.Tensor,
        y: torch.Tensor,
        layers: Sequence[int],
    ) -> None:
        self.weights = [w.detach() for w in weights]
        self.depth = len(self.weights)
        self.dim = self.weights[0].shape[0]
        self.activation = activation
        self.x, self.y = x, y
        self.layers = tuple(sorted(set(layers)))
        bad = [l for l in self.layers if not 0 <= l < self.depth]
        if bad:
            raise ValueError(f"layers {bad} do not exist: the toy MLP has layers 0..{self.depth - 1}")
        self.params = {layer_name(l): self.weights[l] for l in self.layers}
        self._layer_of = {layer_name(l): l for l in self.layers}
        self._prefix: Dict[int, torch.Tensor] = {}

    @property
    def dtype(self) -> torch.dtype:
        return self.x.dtype

    @property
    def batch_size(self) -> int:
        return self.x.shape[0]

    def at(self, params: Mapping[str, torch.Tensor]) -> "ToyObjective":
        """The same objective (batch, studied layers, fixed weights) at the studied weights ``params``."""
        return ToyObjective(self._merged(params), self.activation, self.x, self.y, self.layers)

    def _merged(self, params: Optional[Mapping[str, torch.Tensor]]) -> List[torch.Tensor]:
        ws = list(self.weights)
        for name, value in self.with_params(params).items():
            ws[self._layer_of[name]] = value
        return ws

    # --- the differentiable loss ---

    def loss(self, params: Optional[Mapping[str, torch.Tensor]] = None, surrogate: SurrogateSpec = None) -> torch.Tensor:
        """L = mean (student(x) − y)²; with ``surrogate``, its backward replaces sign's."""
        ws = self._merged(params)
        s = resolve_surrogate(surrogate)
        if s is not None and self.activation.kind not in ("sign", "identity"):
            raise ValueError(
                f"a surrogate replaces the backward of a sign activation; the student's act "
                f"{self.activation.spec!r} is not sign-family (use surrogate=None for its own backward)"
            )
        h = self.x
        for l, w in enumerate(ws):
            h = F.linear(h, w)  # (B, d)
            if l < self.depth - 1:
                h = self.activation(h, s if self.activation.kind == "sign" else None)
        return F.mse_loss(h, self.y)

    # --- shared no-grad forward pieces ---

    def _input_of(self, layer: int) -> torch.Tensor:
        """The input of ``layer`` (B, d) at the current weights, cached: the shared prefix of a population."""
        if layer not in self._prefix:
            h = self.x
            for l in range(layer):
                h = self.activation.fast(F.linear(h, self.weights[l]))
            self._prefix[layer] = h
        return self._prefix[layer]

    def _cache(self, ws: Sequence[torch.Tensor]) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """Inputs u_l and pre-activations z_l = u_l W_lᵀ of every layer, (B, d) each."""
        us, zs = [self.x], []
        for l, w in enumerate(ws):
            zs.append(F.linear(us[-1], w))
            if l < self.depth - 1:
                us.append(self.activation.fast(zs[-1]))
        return us, zs

    # --- losses: the population in parallel ---

    def losses(self, stacked: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """L for every member of ``stacked`` (name -> (pop, d, d)); (pop,) float64.

        Batched matmuls over (members × samples) chunks of about
        ``CACHE_NUMBERS`` activations; the input of the first stacked layer is
        shared by all members and computed once.
        """
        pop = stacked_size(stacked, self.params)
        if self.activation.kind == "generic":
            return super().losses(stacked)
        per_layer = {self._layer_of[name]: t.to(self.dtype) for name, t in stacked.items()}
        first = min(per_layer)
        u = self._input_of(first)  # (B, d), shared
        batch, d = u.shape
        members, rows = self._chunks(pop, batch)

        @torch.no_grad()
        def member_chunk(p0: int) -> torch.Tensor:
            wt = {l: w[p0 : p0 + members].transpose(1, 2) for l, w in per_layer.items()}  # (m, d_in, d_out)
            sums = torch.zeros(min(members, pop - p0), dtype=torch.float64)
            for b0 in range(0, batch, rows):
                sums += self._chunk_loss_sums(u[b0 : b0 + rows], self.y[b0 : b0 + rows], first, wt)
            return sums

        return torch.cat(map_parallel(member_chunk, range(0, pop, members))) / (batch * d)

    def _chunks(self, pop: int, batch: int) -> Tuple[int, int]:
        """(members, samples) per chunk: ``CHUNK_ROWS`` samples, members × samples × d ≈ CACHE_NUMBERS."""
        rows = min(batch, CHUNK_ROWS)
        return max(1, min(pop, CACHE_NUMBERS // (rows * self.dim))), rows

    def _chunk_loss_sums(self, u: torch.Tensor, y: torch.Tensor, first: int, wt: Dict[int, torch.Tensor]) -> torch.Tensor:
        """Σ over samples and outputs of (out − y)² for every member of the chunk; (m,) float64.

        ``u`` (b, d) is the shared input of layer ``first``; ``wt[l]`` (m, d_in, d_out)
        the members' transposed weights of each stacked layer. With a single
        stacked layer the members are laid out (b, m, d) and that layer is one
        wide GEMM (b, d) @ (d, m·d); the shared layers after it are one GEMM
        over b·m rows. Otherwise (m, b, d) and batched GEMMs.

        Sign activations are kept as the mask m = 1{z >= 0} and never turned into
        ±1: with c = W·1 the next pre-activation is z' = (2m − 1)Wᵀ = 2t − c,
        t = mWᵀ, and 1{z' >= 0} = 1{t >= c/2} exactly (2t and c/2 are exact in
        floating point), so each hidden layer costs one GEMM and one in-place
        comparison; the output layer is r = t·2 − (c + y).
        """
        d = self.dim
        sign = self.activation.kind == "sign"
        wide = len(wt) == 1
        m = next(iter(wt.values())).shape[0]
        masked = False  # is h the 0/1 mask of a sign activation?
        h = u  # (b, d), then (b, m, d) if wide else (m, b, d)
        last = self.depth - 1
        for l in range(first, self.depth):
            w = wt.get(l)
            scale = 2.0 if masked and l == last else 1.0  # the output layer gets 2t directly
            if w is None:  # shared weight: one GEMM over every row
                weight = self.weights[l]
                h = (h.reshape(-1, d) @ (scale * weight.T)).view(h.shape)
                offset = weight.sum(1) if masked else None  # c = W·1, (d,)
            elif h.dim() == 2:  # shared (unmasked) input, per-member weights
                if wide:
                    h = (h @ w.transpose(0, 1).reshape(d, m * d)).view(h.shape[0], m, d)  # (b, m, d)
                else:
                    h = torch.matmul(h, w)  # (m, b, d)
                offset = None
            else:
                h = torch.bmm(h, scale * w)  # (m, b, d)
                offset = w.sum(1)[:, None, :] if masked else None  # (m, 1, d)
            if l < last:
                if sign:
                    h, masked = (h.ge_(offset / 2) if offset is not None else h.ge_(0)), True
                else:
                    h, masked = self.activation.fast(h), False
            elif offset is not None:
                if wide or offset.dim() == 1:
                    h = h.sub_(offset)  # r = 2t − c ...
                else:
                    h = h.sub_(offset)
        # ... − y, squared and summed per member (float32 partial sums, accumulated in float64
        # by the caller; sum(dtype=float64) would first copy the chunk to float64)
        if wide:
            return h.sub_(y[:, None, :]).square_().sum(0).sum(1).double()  # (b, m, d) -> (m,)
        if h.dim() == 2:
            h = h.unsqueeze(0)
        return h.sub_(y).square_().sum(dim=(1, 2)).double()

    # --- coordinate_deltas: every single-coordinate move (CDG, DG) ---

    def coordinate_deltas(
        self, steps: Sequence[Step], params: Optional[Mapping[str, torch.Tensor]] = None
    ) -> Dict[str, torch.Tensor]:
        """L(w + s_ij·e_ij) − L(w) for every studied W_l[i, j] and step s; name -> (n_steps, d, d) float64.

        A step is a number, or name -> number or (d, d) tensor (``Objective.coordinate_deltas``).
        A tensor whose magnitude is constant along each row (a sign flip of XNOR weights,
        s_ij = −2α_i sign(W_ij)) takes the fast paths twice, once per sign; any other tensor
        an elementwise pass over (samples × d × d).
        """
        if self.activation.kind == "generic":
            return super().coordinate_deltas(steps, params)
        values = [step_values(s, self.params) for s in steps]
        ws = self._merged(params)
        with torch.no_grad():
            us, zs = self._cache(ws)
            residual = zs[-1] - self.y  # (B, d)
            row_loss = residual.square().mean(dim=-1)  # (B,)
            out = {}
            for name in self.params:
                l = self._layer_of[name]
                per_step = [v[name] for v in values]
                if l == self.depth - 1 or self.activation.kind == "identity":
                    out[name] = self._deltas_linear(ws, us, residual, l, per_step)
                else:
                    out[name] = self._deltas_quantized(ws, us, zs, residual, row_loss, l, per_step)
        return out

    def _deltas_linear(self, ws, us, residual, l: int, steps: List[float]) -> torch.Tensor:
        """Closed form when everything after layer l is linear: out gains s·u_j·M[:, i].

        ΔL = [2s ((rM)ᵀu)_ij + s² ‖M[:, i]‖² Σ_n u_nj²] / (B d), M = W_{L-1}···W_{l+1}.
        """
        d = self.dim
        m = torch.eye(d, dtype=torch.float64)
        for k in range(l + 1, self.depth):
            m = ws[k].double() @ m
        u = us[l].double()  # (B, d_j)
        rm = residual.double() @ m  # (B, d_i)
        cross = rm.T @ u  # (d_i, d_j)
        quad = m.square().sum(0)[:, None] * u.square().sum(0)[None, :]  # (d_i, d_j)
        scale = 1.0 / (self.batch_size * d)
        return torch.stack([(2.0 * s * cross + s * s * quad) * scale for s in steps])

    def _level_changes(self, ws, us, zs, residual, row_loss, l: int, levels: torch.Tensor) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """For each alternative value v (B, d) of layer l's activation: the per-sample loss change D (B, d).

        Two levels: one alternative (the other level). More: one per level (D = 0 where v equals the current value).
        """
        a = us[l + 1]  # (B, d) current activation of layer l
        if len(levels) == 2:
            alternatives = [torch.where(a == levels[0], levels[1], levels[0])]
        else:
            alternatives = [torch.full_like(a, float(q)) for q in levels]
        changes = []
        for v in alternatives:
            delta = v - a  # (B, d_i): change of a[n, i]
            changes.append(self._replaced_loss_change(ws, zs, residual, row_loss, l, delta))
        return alternatives, changes

    def _replaced_loss_change(self, ws, zs, residual, row_loss, l: int, delta: torch.Tensor) -> torch.Tensor:
        """D[n, i] = loss of sample n with a_l[n, i] += delta[n, i], minus its loss; (B, d)."""
        w_next = ws[l + 1]  # (d_out, d_i); column i is the rank-one update direction
        d = self.dim
        if l + 1 == self.depth - 1:
            # The next layer is the output: ‖r + δ w_i‖² − ‖r‖² = 2δ r·w_i + δ² ‖w_i‖².
            rw = residual.double() @ w_next.double()  # (B, d_i)
            col = w_next.double().square().sum(0)  # (d_i,)
            dd = delta.double()
            change = (2.0 * dd * rw + dd.square() * col) / d
        else:
            z_next = zs[l + 1]  # (B, d)
            wt = w_next.T  # (d_i, d_out)
            rows = max(1, CACHE_NUMBERS // (d * d))

            @torch.no_grad()
            def rows_from(n0: int) -> torch.Tensor:
                sl = slice(n0, n0 + rows)
                # z_next[n] + δ[n, i] W[:, i] for every unit i: (c, d_i, d_out)
                z = torch.addcmul(z_next[sl, None, :], delta[sl, :, None], wt[None, :, :])
                loss = self._row_losses_from_pre(z, l + 1, ws, self.y[sl, None, :])  # (c, d_i)
                return loss.double() - row_loss[sl, None].double()

            change = torch.cat(map_parallel(rows_from, range(0, delta.shape[0], rows)))
        return change.masked_fill(delta == 0, 0.0)

    def _row_losses_from_pre(self, z: torch.Tensor, layer: int, ws, y: torch.Tensor) -> torch.Tensor:
        """Per-row loss mean((out − y)²) from the pre-activation ``z`` (…, d) of ``layer`` (overwrites z).

        ``y`` broadcasts against ``z``. Sign activations stay 0/1 masks m = 1{z >= 0},
        as in ``_chunk_loss_sums``: with t = mWᵀ and c = W·1 the next pre-activation
        is 2t − c, so its sign is 1{t >= c/2}, and the output is r = m(2Wᵀ) − c − y.
        """
        shape = z.shape
        h = z.reshape(-1, self.dim)  # (rows, d): the true pre-activation of `layer`
        last = self.depth - 1
        sign = self.activation.kind == "sign"
        mask_in = False  # is h the 0/1 mask fed to the next GEMM?
        for l in range(layer, self.depth):
            affine = mask_in and l > layer  # then h below is t, and the pre-activation is 2t − c
            if l > layer:
                w = ws[l]
                h = h @ (2.0 * w.T if affine and l == last else w.T)
            if l < last:
                if sign:
                    h = h.ge_(ws[l].sum(1) / 2) if affine else h.ge_(0)  # 1{pre-activation >= 0}
                    mask_in = True
                else:
                    h, mask_in = self.activation.fast(h), False
            elif affine:
                h = h.sub_(w.sum(1))  # 2t − c
        return h.view(shape).sub_(y).square_().mean(dim=-1)

    def _deltas_quantized(self, ws, us, zs, residual, row_loss, l: int, steps: List[Any]) -> torch.Tensor:
        act = self.activation
        levels = act.level_values(self.dtype)
        _, changes = self._level_changes(ws, us, zs, residual, row_loss, l, levels)
        table = None if len(levels) == 2 else torch.stack(changes, dim=-1)  # (B, d_i, m): D for each new level
        d = self.dim
        result = torch.zeros(len(steps), d, d, dtype=torch.float64)
        for si, s in enumerate(steps):
            if not isinstance(s, torch.Tensor):
                result[si] = self._quantized_step(zs[l], us[l], us[l + 1], changes, table, levels, l, s)
                continue
            magnitude = s.abs()
            if torch.equal(magnitude, magnitude[:, :1].expand_as(magnitude)):  # |s_ij| = m_i: a pass per sign
                m = magnitude[:, 0].to(self.dtype)  # (d_i,)
                for sign, where in ((1.0, s > 0), (-1.0, s < 0)):
                    if bool(where.any()):
                        part = self._quantized_step(zs[l], us[l], us[l + 1], changes, table, levels, l, sign * m)
                        result[si] = torch.where(where, part, result[si])
            else:
                shift = s.to(self.dtype)[:, None, :]  # (d_i, 1, d_j)
                result[si] = self._elementwise_step(zs[l], us[l], us[l + 1], changes, table, levels, shift)
        return result

    def _quantized_step(self, z, u, a, changes, table, levels, l: int, s: Union[float, torch.Tensor]) -> torch.Tensor:
        """ΔL(i, j) of W_l[i, j] += s for one step ``s``: a number or a (d_i,) vector of one sign (a step per row)."""
        act = self.activation
        per_row = isinstance(s, torch.Tensor)
        if l == 0 and act.kind == "sign":
            return self._sign_first_layer(z, u, changes[0], s)
        if l == 0:  # continuous input: elementwise over (d_i, n, d_j) chunks
            return self._elementwise_step(z, u, a, changes, table, levels, s[:, None, None] if per_row else s)
        # Quantized input u in `levels`: the shift s·u_nj takes one value per input level.
        acc = torch.zeros(self.dim, self.dim, dtype=torch.float64)
        shift = s[None, :] if per_row else s  # (1, d_i) or a number
        for v in levels.tolist():
            if v == 0:
                continue  # no shift, no change
            new = act.fast(z + shift * v)  # (B, d_i)
            if table is None:
                g = torch.where(new != a, changes[0], 0.0)
            else:
                g = torch.gather(table, 2, torch.bucketize(new, levels)[..., None]).squeeze(-1)
            acc += g.T @ (u == v).double()  # (d_i, d_j)
        return acc / self.batch_size

    def _elementwise_step(self, z, u, a, changes, table, levels, shift: Union[float, torch.Tensor]) -> torch.Tensor:
        """ΔL(i, j) from the new pre-activations z[n, i] + shift_ij·u[n, j], over (d_i, n, d_j) chunks.

        ``shift``: a number, or broadcastable to (d_i, 1, d_j). Exact for any input u.
        """
        act = self.activation
        d, batch = self.dim, self.batch_size
        rows = max(1, MASK_NUMBERS // (d * d))
        acc = torch.zeros(d, d, dtype=torch.float64)
        for n0 in range(0, batch, rows):
            sl = slice(n0, n0 + rows)
            znew = z[sl].T[:, :, None] + shift * u[sl][None, :, :]  # (d_i, c, d_j)
            if table is None:
                changed = act.fast(znew) != a[sl].T[:, :, None]
                weights = changes[0][sl].T.to(self.dtype)  # (d_i, c)
                acc += torch.bmm(weights[:, None, :], changed.to(self.dtype)).squeeze(1).double()
            else:
                idx = torch.bucketize(act.fast(znew).contiguous(), levels)  # (d_i, c, d_j)
                acc += torch.gather(table[sl].transpose(0, 1), 2, idx).sum(1)
        return acc / batch

    def _sign_first_layer(
        self, z: torch.Tensor, x: torch.Tensor, change: torch.Tensor, s: Union[float, torch.Tensor]
    ) -> torch.Tensor:
        """ΔL(i, j) for W_0[i, j] += s with sign activations: (1/B) Σ_n D[n, i]·flip(n, i, j).

        sign(z + s·x_j) differs from sign(z) iff C xor q, where t = −z/s and
        C = 1{x_j < t}, q = 1{z < 0} for s > 0, or C = 1{x_j <= t}, q = 1{z >= 0}
        for s < 0. So Σ_n D·flip = Σ_n D(1 − 2q)·C + Σ_n D·q: one comparison
        written straight into a float buffer and one batched mat-vec per chunk.
        ``s`` is a number or a (d_i,) vector of one sign (a step per row; rows
        with s_i = 0 do not move).
        """
        d = self.dim
        if isinstance(s, torch.Tensor):
            still = s == 0
            positive = bool((s > 0).any())
            s_row = torch.where(still, torch.ones_like(s), s)[None, :]  # (1, d_i)
        else:
            if s == 0:
                return torch.zeros(d, d, dtype=torch.float64)
            still, positive, s_row = None, s > 0, s
        batch = z.shape[0]
        t = -z / s_row  # (B, d_i)
        q = z < 0 if positive else z >= 0
        signed = torch.where(q, -change, change).to(self.dtype)  # (B, d_i): D(1 − 2q)
        constant = torch.where(q, change, 0.0).sum(0)  # (d_i,) float64
        compare = torch.lt if positive else torch.le
        rows = max(1, MASK_NUMBERS // (d * d))

        @torch.no_grad()
        def rows_from(n0: int) -> torch.Tensor:
            c = min(rows, batch - n0)
            mask = torch.empty(d, c, d, dtype=self.dtype)  # (d_i, c, d_j)
            compare(x[n0 : n0 + c][None, :, :], t[n0 : n0 + c].T[:, :, None], out=mask)  # C as 0./1.
            weights = signed[n0 : n0 + c].T[:, None, :]  # (d_i, 1, c)
            return torch.bmm(weights, mask).squeeze(1).double()  # (d_i, d_j)

        acc = torch.stack(map_parallel(rows_from, range(0, batch, rows))).sum(0)
        result = (acc + constant[:, None]) / batch
        return result if still is None else result.masked_fill(still[:, None], 0.0)

    # --- line_losses: the lr scan ---

    def line_losses(self, direction: Mapping[str, torch.Tensor], lrs: Any) -> torch.Tensor:
        """L(w − lr·d) for every lr; (n_lr,) float64, exact (see the module docstring)."""
        lrs64 = as_lr_tensor(lrs)
        dirs = checked_direction(self, direction)
        touched = {self._layer_of[name]: t for name, t in dirs.items() if bool(t.ne(0).any())}
        if not touched or len(lrs64) == 0:
            return torch.full((len(lrs64),), float(self.loss().detach()), dtype=torch.float64)
        if self.activation.kind == "generic":
            return super().line_losses(direction, lrs)
        order = torch.argsort(lrs64, stable=True)
        ordered = lrs64[order]
        with torch.no_grad():
            if self.activation.kind == "identity":
                values = self._line_polynomial(touched, ordered)
            else:
                values = self._line_segments(touched, ordered)
        out = torch.empty_like(values)
        out[order] = values
        return out

    def _line_polynomial(self, touched: Dict[int, torch.Tensor], lrs: torch.Tensor) -> torch.Tensor:
        """Linear network: out(lr) = Σ_p lr^p C_p, L(lr) = Σ_{p,q} lr^{p+q} <R_p, R_q> / (B d)."""
        first = min(touched)
        ws, u = self._exact_input_of(first)
        coeffs = [u]  # coefficients of lr^p, (B, d) each, float64
        for l in range(first, self.depth):
            w = ws[l]
            nxt = [c @ w.T for c in coeffs]
            if l in touched:
                dl = touched[l].double()
                nxt.append(torch.zeros_like(nxt[0]))
                for p, c in enumerate(coeffs):
                    nxt[p + 1] = nxt[p + 1] - c @ dl.T
            coeffs = nxt
        coeffs[0] = coeffs[0] - self.y.double()
        flat = torch.stack([c.reshape(-1) for c in coeffs])  # (P+1, B·d)
        gram = flat @ flat.T  # (P+1, P+1)
        degree = len(coeffs) - 1
        powers = torch.stack([lrs**k for k in range(2 * degree + 1)])  # (2P+1, n_lr)
        poly = torch.zeros(2 * degree + 1, dtype=torch.float64)
        for p in range(degree + 1):
            for q in range(degree + 1):
                poly[p + q] += gram[p, q]
        return (poly @ powers) / (self.batch_size * self.dim)

    def _exact_input_of(self, layer: int) -> Tuple[List[torch.Tensor], torch.Tensor]:
        """float64 weights and the float64 input of ``layer`` (the lr scan works in float64)."""
        key = -1 - layer  # cached beside the working-precision prefixes
        ws = [w.double() for w in self.weights]
        if key not in self._prefix:
            h = self.x.double()
            for l in range(layer):
                h = self.activation.fast(h @ ws[l].T)
            self._prefix[key] = h
        return ws, self._prefix[key]

    def _line_segments(self, touched: Dict[int, torch.Tensor], lrs: torch.Tensor) -> torch.Tensor:
        """Quantized network: piecewise-constant activations along the line (module docstring).

        Computed in float64 whatever the objective's dtype: the level changes are
        then located to ~1e-16, so a float32 objective gets the exact-arithmetic
        scan of its weights and data (a float32 evaluation of L(w − lr·d) differs
        from it only by its own rounding near activation thresholds).
        """
        n_lr = len(lrs)
        first = min(touched)
        ws, u = self._exact_input_of(first)  # (B, d) float64
        touched = {l: t.double() for l, t in touched.items()}
        y = self.y.double()
        levels = self.activation.level_values(torch.float64)

        @torch.no_grad()
        def samples_from(n0: int) -> torch.Tensor:
            acc = torch.zeros(3, n_lr + 1, dtype=torch.float64)  # difference arrays of c0, c1, c2
            sample = torch.arange(n0, min(self.batch_size, n0 + SEGMENT_ROWS))
            lo = torch.zeros(len(sample), dtype=torch.long)
            hi = torch.full((len(sample),), n_lr, dtype=torch.long)
            self._propagate(sample, lo, hi, u[sample], first, ws, y, touched, lrs, levels, acc)
            return acc

        acc = torch.stack(map_parallel(samples_from, range(0, self.batch_size, SEGMENT_ROWS))).sum(0)
        sums = torch.cumsum(acc, dim=1)[:, :n_lr]  # (3, n_lr)
        total = sums[0] - 2.0 * lrs * sums[1] + lrs.square() * sums[2]
        return total / (self.batch_size * self.dim)

    def _propagate(self, sample, lo, hi, h, l, ws, y, touched, lrs, levels, acc) -> None:
        """Push rows (sample, lr interval [lo, hi), input h of layer l) through layers l..L−1.

        On the last layer each row's loss is the quadratic Σ(a − y − lr·b)²; its
        three coefficients are added to the difference arrays ``acc`` over [lo, hi).
        """
        for r0 in range(0, len(sample), SEGMENT_ROWS):
            part = slice(r0, r0 + SEGMENT_ROWS)
            s_, lo_, hi_, h_ = sample[part], lo[part], hi[part], h[part]
            a = h_ @ ws[l].T  # (R, d): pre-activation at lr = 0
            b = h_ @ touched[l].T if l in touched else None  # (R, d): its slope, z = a − lr·b
            if l == self.depth - 1:
                r = a - y[s_]
                coefficients = [r.square().sum(-1)]
                if b is None:
                    coefficients += [torch.zeros_like(coefficients[0])] * 2
                else:
                    coefficients += [(r * b).sum(-1), b.square().sum(-1)]
                for k, c in enumerate(coefficients):
                    acc[k].index_add_(0, lo_, c)
                    acc[k].index_add_(0, hi_, -c)
                continue
            if b is None:
                self._propagate(s_, lo_, hi_, self.activation.fast(a), l + 1, ws, y, touched, lrs, levels, acc)
                continue
            s2, lo2, hi2, h2 = self._split(s_, lo_, hi_, a, b, lrs, levels)
            self._propagate(s2, lo2, hi2, h2, l + 1, ws, y, touched, lrs, levels, acc)

    def _split(self, sample, lo, hi, a, b, lr_t, levels):
        """Split every row's lr interval where a unit of act(a − lr·b) changes level.

        Returns the new rows (sample, lo, hi, activation), empty intervals dropped.
        """
        act = self.activation

        def level_of(z: torch.Tensor) -> torch.Tensor:
            return act.level_index(act.fast(z), levels)

        def level_at(k: torch.Tensor, rows: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
            # The same arithmetic as for whole rows below: a − lr·b, elementwise.
            return level_of(a[rows, units] - lr_t[k] * b[rows, units])

        n_rows, d = a.shape
        start = level_of(a - lr_t[lo][:, None] * b)  # (R, d): levels at the row's first lr
        end = level_of(a - lr_t[hi - 1][:, None] * b)  # and at its last
        changed = start != end
        if not bool(changed.any()):
            return sample, lo, hi, levels[start]
        r_idx, u_idx = torch.nonzero(changed, as_tuple=True)
        s0, s1 = start[r_idx, u_idx], end[r_idx, u_idx]
        rising = s1 > s0
        # One event per level boundary t crossed: t in (min, max].
        events_r, events_u, events_t, events_inc = [], [], [], []
        for t in range(1, len(levels)):
            crossed = (torch.minimum(s0, s1) < t) & (torch.maximum(s0, s1) >= t)
            events_r.append(r_idx[crossed])
            events_u.append(u_idx[crossed])
            events_t.append(torch.full((int(crossed.sum()),), t, dtype=torch.long))
            events_inc.append(torch.where(rising[crossed], 1, -1))
        er, eu, et, inc = (torch.cat(x) for x in (events_r, events_u, events_t, events_inc))
        # Binary search for the first k in [lo, hi) where [level >= t] differs from its value at lo.
        low = lo[er].clone()  # predicate false here
        high = hi[er] - 1  # predicate true here
        initial = start[er, eu] >= et
        while True:
            open_ = high - low > 1
            if not bool(open_.any()):
                break
            mid = torch.where(open_, (low + high) // 2, low)
            flipped = (level_at(mid, er, eu) >= et) != initial
            high = torch.where(open_ & flipped, mid, high)
            low = torch.where(open_ & ~flipped, mid, low)
        at = high  # grid index from which the unit has crossed boundary t
        # Sort the events by (row, grid index) and cut every row into 1 + (its events) pieces.
        order = torch.argsort(er * (len(lr_t) + 1) + at, stable=True)
        er, eu, at, inc = er[order], eu[order], at[order], inc[order]
        count = torch.bincount(er, minlength=n_rows)  # (R,)
        pieces = 1 + count
        offsets = torch.cumsum(pieces, 0) - pieces  # first piece of each row
        n_new = int(pieces.sum())
        row_of = torch.repeat_interleave(torch.arange(n_rows), pieces)  # (n_new,)
        rank = torch.arange(len(er)) - (torch.cumsum(count, 0) - count)[er]
        position = offsets[er] + 1 + rank  # the piece each event starts
        new_lo = lo[row_of].clone()
        new_lo[position] = at
        new_hi = torch.empty_like(new_lo)
        new_hi[:-1] = new_lo[1:]
        last = offsets + count
        new_hi[last] = hi
        increments = torch.zeros(n_new, d, dtype=torch.long)
        increments.index_put_((position, eu), inc, accumulate=True)
        running = torch.cumsum(increments, 0)
        state = start[row_of] + running - running[offsets][row_of]
        keep = new_hi > new_lo
        return sample[row_of][keep], new_lo[keep], new_hi[keep], levels[state[keep]]


__all__ = [
    "ToyActivation",
    "ToyObjective",
    "ToyTask",
    "layer_name",
    "sub_seed",
]
