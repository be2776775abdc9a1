"""``hfspec.compile``: a reusable plan of fixed-shape graphs over static KV caches.

Why this shape (docs/lowering.md, measured on 2-core CPUs): inductor's C++ GEMM templates
(``max_autotune`` with the CPP backend) need *frozen* weights, and freezing folds everything
that lives on the module, so HF's static cache (a module attribute) crashes there. Here the cache
is a ``StaticStore`` outside the module, whose buffers are graph inputs written by index; the
weights are frozen constants. One graph per model and fixed shape: the target's verify width
(root + node budget) and the draft's one-token step. Prefill and odd widths run eagerly into the
same buffers (long, variable shapes would each cost a graph and a frozen copy of the weights).

    plan = hfspec.compile(model, hfspec.DraftModel(draft, num_tokens=7))
    model.generate(**inputs, custom_generate=hfspec.generate, assistant_strategy=plan)
"""

from __future__ import annotations

import contextlib
import time
import types
from collections.abc import Callable
from typing import Any

import torch
from transformers import GenerationConfig, PreTrainedModel

from hfspec.exceptions import ConfigurationError
from hfspec.kv import StaticStore, cache_argument
from hfspec.masks import check_attention, grouped_query_sdpa
from hfspec.proposers.base import NoDrafts, ProposerSession, SessionContext, Strategy
from hfspec.runner import ModelRunner
from hfspec.step import VerifyBatch

BACKENDS = ("inductor", "cudagraphs", "tensorrt", "eager")

# Measured best on these CPUs (docs/lowering.md): frozen weights + autotuned C++ micro-GEMMs.
CPU_INDUCTOR_OPTIONS: dict[str, Any] = {
    "freezing": True,
    "max_autotune": True,
    "max_autotune_gemm_backends": "CPP,ATEN",
}


def _num_layers(model: PreTrainedModel) -> int:
    return int(model.config.get_text_config(decoder=True).num_hidden_layers)


def _own_code(method):
    """``method`` with a code object of its own. Dynamo keeps compiled graphs per code object, so
    each runner's graph (and its frozen weights) lives and dies with the runner instead of piling
    up, across plans, under one shared function and its recompile limit."""
    fn = method.__func__
    code = fn.__code__.replace(co_name=f"{fn.__name__}_{id(method.__self__):x}")
    return types.MethodType(types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__), method.__self__)


def _standard(t: torch.Tensor) -> torch.Tensor:
    return t.clone(memory_format=torch.contiguous_format)


def _dynamic_keys(mask: torch.Tensor) -> torch.Tensor:
    """Mark the key dimension dynamic before the first trace, so the graph is built for any view length."""
    torch._dynamo.mark_dynamic(mask, mask.dim() - 1)
    return mask


def _key_width(mask) -> int:
    return (next(iter(mask.values())) if isinstance(mask, dict) else mask).shape[-1]


class GraphRunner(ModelRunner):
    """A ``ModelRunner`` over a static store whose ``width``-token forwards run one compiled graph."""

    def __init__(
        self,
        model: PreTrainedModel,
        store: StaticStore,
        width: int,
        compiler: Callable | None,
        head: torch.nn.Module | None = None,
        compute_dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(model, store, head)
        self.width = width
        # the graph computes under autocast to this dtype (frozen weights are folded to it); eager
        # forwards (prefill, other widths) keep the model's dtype, and the KV buffers too
        self.compute_dtype = compute_dtype
        self.compiles = 0  # graphs the backend built (steady state: 1)
        self.compile_seconds = 0.0  # wall time of the first (compiling) call
        self.graph_calls = 0
        self._eager = False
        self.graph = compiler(_own_code(self._fixed), self) if compiler is not None else None
        options = {} if compiler is None else compiler.inductor_options
        if options is None:  # the measured CPU default; on a GPU inductor's own (the C++ GEMMs are CPU kernels)
            options = CPU_INDUCTOR_OPTIONS if model.device.type == "cpu" else {}
        self.inductor_options = dict(options)

    def config_patch(self):
        """Inductor options as a config patch around graph calls. Passing them to ``compile_fx``
        (or as ``torch.compile(options=)``) does not freeze: dynamo decides how to lift the weights
        while tracing, from the global config (checked: no ``_frozen_param`` in the output code)."""
        import torch._inductor.config as inductor_config

        return inductor_config.patch(self.inductor_options)

    def _fixed(self, tokens, positions, mask):
        # the KV view length is the mask's (dynamic) last dimension: one graph for every length
        self.store.view = _key_width(mask)
        return self._forward(tokens, positions, mask, tokens.shape[1])

    def uses_graph(self, width: int) -> bool:
        """Whether the next forward of ``width`` tokens (its slots already written) runs the graph.

        Eager instead: other widths (prefill), catch-up parts, the call that allocates the buffers,
        and views of one slot (dynamo specializes sizes 0 and 1: they would cost a second graph)."""
        return (
            self.graph is not None
            and width == self.width
            and not self._eager
            and self.store.allocated
            and self.store.view >= 2
        )

    def _call(self, tokens, positions, mask, keep: int) -> torch.Tensor:
        if not self.uses_graph(tokens.shape[1]):
            return super()._call(tokens, positions, mask, keep)
        start = time.perf_counter()
        # standard strides: dynamo guards on exact strides (even of size-1 dims), a slice would recompile
        if isinstance(mask, dict):
            mask = {kind: _dynamic_keys(_standard(m)) for kind, m in mask.items()}
        else:
            mask = _dynamic_keys(_standard(mask))
        # dynamo traces inside the call: freezing (and the GQA switch) must be on while it does
        with self.config_patch(), grouped_query_sdpa(), self._autocast():
            logits = self.graph(_standard(tokens), _standard(positions), mask)
        if self.graph_calls == 0:
            self.compile_seconds = time.perf_counter() - start
        self.graph_calls += 1
        return logits[:, -keep:]

    def _autocast(self):
        if self.compute_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.model.device.type, dtype=self.compute_dtype)

    def verify(self, batch: VerifyBatch) -> torch.Tensor:
        """Catch-up slots (the prompt, on the first step) eagerly, then the fixed-width root + nodes."""
        if batch.root > 0:
            head = batch.part(0, batch.root)
            self._eager = True
            try:
                self.run(head.tokens, head.positions, head.valid, head.visible, keep=1)
            finally:
                self._eager = False
        tail = batch.part(batch.root, batch.num_columns)
        return self.run(tail.tokens, tail.positions, tail.valid, tail.visible, keep=tail.num_columns)

    def chain(self, tokens, positions, valid, keep: int) -> torch.Tensor:
        """One-token graphs take short catch-ups token by token (cheaper than an eager multi-token forward)."""
        q = tokens.shape[1]
        if self.width != 1 or q > 4 or keep > 1:
            return super().chain(tokens, positions, valid, keep)
        eye = torch.ones((tokens.shape[0], 1, 1), dtype=torch.bool, device=tokens.device)
        for i in range(q):
            logits = self.run(tokens[:, i : i + 1], positions[:, i : i + 1], valid[:, i : i + 1], eye, keep=1)
        return logits


def _compiler(backend: str, options: dict[str, Any] | None) -> Callable | None:
    """fn, runner -> compiled fn; counts graphs built on ``runner.compiles``."""
    if backend == "eager":
        return None
    if backend == "tensorrt":
        try:
            import torch_tensorrt  # noqa: F401
        except ImportError as err:
            raise ConfigurationError(
                "backend='tensorrt' needs Torch-TensorRT (pip install 'hfspec[tensorrt]' on a CUDA machine); "
                "use backend='inductor' on CPU or 'cudagraphs' on GPU."
            ) from err
    if backend == "cudagraphs" and not torch.cuda.is_available():
        raise ConfigurationError("backend='cudagraphs' needs a CUDA device; use backend='inductor' on CPU.")

    def build(fn, runner):
        if backend == "inductor":
            from torch._inductor.compile_fx import compile_fx as inner
        else:
            inner = torch._dynamo.lookup_backend("torch_tensorrt" if backend == "tensorrt" else backend)

        def counting(gm, example_inputs):
            runner.compiles += 1
            return inner(gm, example_inputs)

        return torch.compile(fn, backend=counting, fullgraph=True, dynamic=False)

    build.inductor_options = (None if options is None else dict(options)) if backend == "inductor" else {}
    return build


class _ExplicitCacheVerify(torch.nn.Module):
    """The verify forward with the KV buffers as explicit inputs: what ``torch.export`` (and so
    Torch-TensorRT's dynamo path) needs. The mask is an explicit additive/boolean tensor, never
    ``is_causal`` (Torch-TensorRT's SDPA converter applies causality only when q == kv length)."""

    def __init__(self, model: PreTrainedModel, batch: int, capacity: int) -> None:
        super().__init__()
        self.model = model
        self.store = StaticStore(_num_layers(model), batch, capacity, model.device)
        self.cache_arg = cache_argument(model)

    def forward(self, tokens, positions, mask, slots, keys: list[torch.Tensor], values: list[torch.Tensor]):
        self.store.slots = slots
        self.store.view = mask.shape[-1]
        for layer, k, v in zip(self.store.cache.layers, keys, values, strict=True):
            layer.keys, layer.values, layer.is_initialized = k, v, True
        cache = {self.cache_arg: self.store.cache}
        out = self.model(input_ids=tokens, attention_mask=mask, position_ids=positions, use_cache=True, **cache)
        return out.logits


def export_verify(plan: CompiledPlan) -> torch.export.ExportedProgram:
    """``torch.export`` the plan's fixed-shape verify step (the artifact Torch-TensorRT consumes).

    Inputs: tokens (B, W) long, positions (B, W) long, mask (B, 1, W, capacity) in the model's
    mask format, slots (W,) long write positions, keys/values: one (B, H_kv, capacity + 1, D) buffer
    per layer (capacity + 1 slots: one spare), written in place at ``slots``; attention reads the
    first ``capacity`` (the mask's width). W = node budget + 1. The plan's target store must
    have run once (its buffers give the shapes).
    """
    store = plan.target.store
    if not store.allocated:
        raise ConfigurationError("export_verify needs the plan to have run once (its KV buffers give the shapes).")
    width, batch, cap = plan.node_budget + 1, plan.batch_size, plan.capacity
    device = plan.model.device
    keys = [layer.keys.clone() for layer in store.cache.layers]
    values = [layer.values.clone() for layer in store.cache.layers]
    tokens = torch.zeros((batch, width), dtype=torch.long, device=device)
    positions = torch.arange(width, device=device).expand(batch, width).contiguous()
    visible = torch.zeros((batch, width, cap), dtype=torch.bool, device=device)
    visible[:, :, :width] = torch.ones((width, width), dtype=torch.bool, device=device).tril()
    from hfspec.masks import as_attention_mask

    mask = as_attention_mask(visible, plan.model, plan.model.dtype).contiguous()
    slots = torch.arange(width, device=device)
    module = _ExplicitCacheVerify(plan.model, batch, cap)
    return torch.export.export(module, (tokens, positions, mask, slots, keys, values))


def _draft_of(strategy: Strategy) -> tuple[PreTrainedModel, torch.nn.Module | None] | None:
    """(draft model, its pruned head or None) of a strategy that drafts with a model, else None."""
    from hfspec.proposers.draft_model import DraftModel
    from hfspec.proposers.jump_forward import JumpForward
    from hfspec.proposers.lookup_or_draft import LookupOrDraft

    if isinstance(strategy, JumpForward):
        return _draft_of(strategy.inner) if strategy.inner is not None else None
    if isinstance(strategy, LookupOrDraft):
        return _draft_of(strategy.draft)
    return (strategy.draft_model, strategy.head) if isinstance(strategy, DraftModel) else None


def _same_draft(a, b) -> bool:
    """Same draft model and same head object (``_draft_of`` results): then one draft graph serves both."""
    if a is None or b is None:
        return a is b
    return a[0] is b[0] and a[1] is b[1]


def _check_dtype(dtype: Any) -> torch.dtype | None:
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ConfigurationError(f"draft_compute_dtype must be a floating torch.dtype (e.g. torch.bfloat16) or None, got {dtype!r}.")
    return dtype


def _default_budget(strategy: Strategy) -> int:
    from hfspec.proposers.jump_forward import JumpForward

    if isinstance(strategy, JumpForward):
        inner = _default_budget(strategy.inner) if strategy.inner is not None else 0
        return inner + strategy.max_tokens
    return int(getattr(strategy, "num_tokens", 0))


class CompiledPlan:
    """A strategy bound to compiled graphs and static caches for one target (and its draft).

    Use it as ``assistant_strategy=plan``. It is built for one batch size and KV capacity;
    calls outside them are refused before any model work. Graphs are compiled on the first call
    (``compile_seconds`` says how long) and reused by every later call.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        strategy: Strategy,
        *,
        backend: str,
        batch_size: int,
        capacity: int,
        node_budget: int,
        options: dict[str, Any] | None,
        draft_options: dict[str, Any] | None,
        draft_compute_dtype: torch.dtype | None = None,
    ) -> None:
        self.model, self.strategy, self.backend = model, strategy, backend
        self.batch_size, self.capacity, self.node_budget = batch_size, capacity, node_budget
        compiler = _compiler(backend, options)
        self.target = GraphRunner(
            model, StaticStore(_num_layers(model), batch_size, capacity, model.device), node_budget + 1, compiler
        )
        self.target.node_budget = node_budget
        self._draft_options = draft_options if draft_options is not None else options
        self._draft_compute_dtype = draft_compute_dtype
        draft = _draft_of(strategy)
        self.draft = self._draft_runner(*draft) if draft is not None else None

    def _draft_runner(self, draft: PreTrainedModel, head: torch.nn.Module | None) -> GraphRunner:
        check_attention(draft)
        # the draft reads every verified slot: its store holds the target's layout plus its own drafts
        store = StaticStore(_num_layers(draft), self.batch_size, self.capacity + self.node_budget + 1, draft.device)
        return GraphRunner(draft, store, 1, _compiler(self.backend, self._draft_options), head,
                           compute_dtype=self._draft_compute_dtype)

    def sharing(self, strategy: Strategy, *, draft_compute_dtype: torch.dtype | None | str = "same") -> CompiledPlan:
        """A plan for another proposer over the SAME graphs and caches (no new compile, no second
        frozen copy of the weights); its drafts are capped at this plan's node budget. Plans that
        share graphs must not run concurrently. ``draft_compute_dtype`` (default: this plan's) other
        than this plan's gives the draft a graph of its own."""
        other = object.__new__(CompiledPlan)
        other.__dict__.update(self.__dict__)
        other.strategy = strategy
        if draft_compute_dtype != "same":
            other._draft_compute_dtype = _check_dtype(draft_compute_dtype)
        draft = _draft_of(strategy)
        if not _same_draft(draft, _draft_of(self.strategy)) or other._draft_compute_dtype != self._draft_compute_dtype:
            # another (or a first) draft: its own one-token graph, compiled on first use; the
            # target graph is still shared (compile the target before loading a draft to keep the
            # memory peak of freezing a large target low)
            other.draft = other._draft_runner(*draft) if draft is not None else None
        return other

    def __repr__(self) -> str:
        return (
            f"CompiledPlan({self.strategy!r}, backend={self.backend!r}, batch_size={self.batch_size}, "
            f"capacity={self.capacity}, node_budget={self.node_budget})"
        )

    @property
    def compile_seconds(self) -> float:
        """Wall time of the first (compiling) graph calls, target + draft."""
        return self.target.compile_seconds + (self.draft.compile_seconds if self.draft is not None else 0.0)

    @property
    def compiles(self) -> int:
        """Graphs built so far (target + draft); constant after the first call."""
        return self.target.compiles + (self.draft.compiles if self.draft is not None else 0)

    # ---------------------------------------------------------------- Strategy protocol
    def validate(self, target: PreTrainedModel, generation_config: GenerationConfig) -> None:
        if target is not self.model:
            raise ConfigurationError(
                f"this plan was compiled for another model ({type(self.model).__name__} at {id(self.model):#x}); "
                "build one with hfspec.compile(model, strategy) for this model."
            )
        self.strategy.validate(target, generation_config)

    def validate_inputs(self, input_ids: torch.Tensor, generation_config: GenerationConfig) -> None:
        """Batch size and capacity, checked before any model work."""
        batch, prompt = input_ids.shape
        if batch != self.batch_size:
            raise ConfigurationError(
                f"this plan was compiled for batch size {self.batch_size}, the call has {batch} rows; "
                f"build one with hfspec.compile(model, strategy, batch_size={batch})."
            )
        new = int(generation_config.max_length) - prompt
        # rows share slots: a step adds the longest row's accepted path, so B rows need at most B x new
        needed = prompt + min(batch * new, new * (self.node_budget + 1)) + self.node_budget + 1
        if needed > self.capacity:
            raise ConfigurationError(
                f"this call may need {needed} KV slots (prompt {prompt}, up to {new} new tokens, batch {batch}); "
                f"the plan has capacity={self.capacity}. Build it with hfspec.compile(..., capacity={needed})."
            )

    def start(self, ctx: SessionContext) -> ProposerSession:
        self.target.store.reset()
        if self.draft is not None:
            self.draft.store.reset()
        return self.strategy.start(_with_draft_runner(ctx, self.draft))


def _with_draft_runner(ctx: SessionContext, runner: GraphRunner | None) -> SessionContext:
    from dataclasses import replace

    return replace(ctx, draft_runner=runner)


def compile(
    model: PreTrainedModel,
    strategy: Strategy | None = None,
    *,
    backend: str = "inductor",
    batch_size: int = 1,
    capacity: int = 2048,
    node_budget: int | None = None,
    options: dict[str, Any] | None = None,
    draft_options: dict[str, Any] | None = None,
    draft_compute_dtype: torch.dtype | None = None,
) -> CompiledPlan:
    """Build a plan: the target's fixed-width verify graph and the draft's one-token step.

    Args:
        model: the target (decoder-only, eager or sdpa attention).
        strategy: DraftModel, PromptLookup, LookupOrDraft, JumpForward(...) or None (plain decoding, compiled).
        backend: "inductor" (CPU/GPU), "cudagraphs" (CUDA), "tensorrt" (needs torch_tensorrt) or
            "eager" (same static caches and fixed shapes, no compilation: the baseline).
        batch_size, capacity: the static caches' shape; calls with another batch size, or that could
            need more KV slots, are refused before any model work.
        node_budget: draft nodes verified per step (default: the strategy's num_tokens; 0 without one).
        options: inductor config patches for the target graph (default on CPU: freezing + max-autotune
            with the C++ GEMM backend, the best measured there; on a GPU, inductor's defaults; pass {} for
            inductor's defaults everywhere).
        draft_options: the same for the draft's graph (default: ``options``).
        draft_compute_dtype: run the draft's one-token graph under autocast to this dtype (e.g.
            ``torch.bfloat16``; frozen weights are folded to it), while its prefill and other eager
            forwards keep the draft's own dtype (eager bf16 matmuls at prefill sizes are ~5x slower than
            float32 on the CPUs measured). It changes only the draft's q; None = the draft's dtype.
    """
    if backend not in BACKENDS:
        raise ConfigurationError(f"backend must be one of {BACKENDS}, got {backend!r}.")
    if not isinstance(model, PreTrainedModel) or model.config.is_encoder_decoder:
        raise ConfigurationError("hfspec.compile needs a decoder-only transformers model.")
    strategy = strategy if strategy is not None else NoDrafts()
    if isinstance(strategy, CompiledPlan):
        raise ConfigurationError("strategy is already a CompiledPlan.")
    check_attention(model)
    budget = _default_budget(strategy) if node_budget is None else node_budget
    if not isinstance(budget, int) or budget < 0:
        raise ConfigurationError(f"node_budget must be an int >= 0, got {node_budget!r}.")
    for name, value in (("batch_size", batch_size), ("capacity", capacity)):
        if not isinstance(value, int) or value < 1:
            raise ConfigurationError(f"{name} must be an int >= 1, got {value!r}.")
    return CompiledPlan(
        model,
        strategy,
        backend=backend,
        batch_size=batch_size,
        capacity=capacity,
        node_budget=budget,
        options=options,
        draft_options=draft_options,
        draft_compute_dtype=_check_dtype(draft_compute_dtype),
    )
