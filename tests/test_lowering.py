"""Lowering: static KV stores, explicit masks, fixed-shape verify graphs (``hfspec.compile``).

- KV stores: write / keep (chain prefix and tree gather) / truncate, unit-tested on tensors.
- Verify batches: positions = prefix length + depth, tree visibility, fixed node budget.
- Plans: greedy output identical to plain ``generate`` for static caches with and without
  compilation (backend="eager" = the same static caches and fixed shapes run eagerly; inductor
  on one architecture, since each compile costs seconds), batch 1 and a padded batch of 3, DraftModel and
  PromptLookup; zero recompiles in steady state (counted by the plan's backend and by dynamo).
- Bad input: another model, another batch size, too little capacity, an unsupported attention
  implementation, a backend that is not installed: clear errors before any forward.
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import hfspec
from hfspec.kv import DynamicStore, StaticStore
from hfspec.step import build_verify_batch
from hfspec.testing import perturbed_copy, tiny_model
from hfspec.tree import ancestry, chain_parents, depths
from tests.conftest import padded_batch


def _forward_counter(model):
    calls = []
    handle = model.register_forward_hook(lambda *a: calls.append(1))
    return calls, handle


# --------------------------------------------------------------------------- pure pieces
def test_ancestry_and_depths_of_a_tree():
    #      root
    #     /    \
    #    n0     n1
    #    |       \
    #    n2       n3     (n4 is padding)
    parents = torch.tensor([[-1, -1, 0, 1, 3]])
    num = torch.tensor([4])
    anc = ancestry(parents, num)
    assert anc[0, 3].tolist() == [True, True, False, True, False, False]  # n2 sees root, n0, itself
    assert anc[0, 4].tolist() == [True, False, True, False, True, False]  # n3 sees root, n1, itself
    assert anc[0, 5].tolist() == [False, False, False, False, False, True]  # padding: itself only
    assert depths(parents, num).tolist() == [[1, 1, 2, 2, 1]]


def test_verify_batch_positions_masks_and_budget():
    slot_tokens = torch.tensor([[0, 0, 5, 6], [4, 5, 6, 7]])
    slot_mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    parents = torch.tensor([[-1, 0], [-1, -1]])  # row 0: chain of 2, row 1: two children of the root
    vb = build_verify_batch(
        slot_tokens, slot_mask, 2, torch.tensor([9, 9]), torch.tensor([[1, 2], [3, 4]]), parents, torch.tensor([2, 1]), budget=3
    )
    assert vb.root == 2 and vb.num_columns == 2 + 1 + 3
    # catch-up slots keep their positions; root = number of valid slots; nodes = root + depth
    assert vb.positions.tolist() == [[0, 1, 2, 3, 4, 2], [2, 3, 4, 5, 4, 4]]
    assert vb.valid.tolist() == [[True, True, True, True, True, False], [True, True, True, True, False, False]]
    # row 0: node 1 sees node 0; row 1: node 1 is padding (num_nodes 1): no tree column but itself
    assert vb.visible[0, 4, 3] and not vb.visible[1, 4, 3]
    assert vb.visible[1, 4, 2:].tolist() == [False, False, True, False]
    assert vb.visible[:, 2, :2].all()  # the root sees every valid catch-up slot
    with pytest.raises(ValueError, match="node budget"):
        build_verify_batch(slot_tokens, slot_mask, 2, torch.tensor([9, 9]), torch.zeros(2, 4, dtype=torch.long),
                           chain_parents(2, 4), torch.tensor([4, 4]), budget=3)


@pytest.mark.parametrize("store_kind", ["dynamic", "static"])
def test_store_keep_gathers_tree_paths_and_truncates(store_kind):
    b, heads, dim = 2, 1, 1
    store = DynamicStore(b) if store_kind == "dynamic" else StaticStore(1, b, capacity=16)
    layer_cache = store.cache

    def write(values):
        q = values.shape[1]
        store.write(torch.ones(b, q, dtype=torch.bool), torch.arange(q).expand(b, q) + store.length)
        kv = values.double()[:, None, :, None].expand(b, heads, q, dim)
        layer_cache.update(kv, kv, 0)

    write(torch.tensor([[10, 11, 12], [20, 21, 22]]))  # 3 committed slots
    write(torch.tensor([[30, 31, 32, 33], [40, 41, 42, 43]]))  # root + 3 tree nodes
    # row 0 keeps columns 0, 2, 3 (root, then nodes 1 and 2); row 1 keeps column 0, 1 (a hole after)
    columns = torch.tensor([[0, 2, 3], [0, 1, 0]])
    valid = torch.tensor([[True, True, True], [True, True, False]])
    store.keep(3, columns, valid)
    keys = layer_cache.layers[0].keys[:, 0, : store.length, 0]
    assert store.length == 6
    assert keys.tolist() == [[10, 11, 12, 30, 32, 33], [20, 21, 22, 40, 41, 40]]
    assert store.valid.tolist() == [[True] * 6, [True] * 5 + [False]]
    assert store.pos[:, 3:].tolist() == [[3, 5, 6], [3, 4, 3]]
    store.truncate(4)
    assert store.length == 4 and store.valid.shape == (2, 4)


def test_static_store_capacity_error():
    store = StaticStore(1, 1, capacity=4)
    store.write(torch.ones(1, 3, dtype=torch.bool), torch.arange(3)[None])
    with pytest.raises(hfspec.ConfigurationError, match="capacity 4 exceeded"):
        store.write(torch.ones(1, 2, dtype=torch.bool), torch.arange(3, 5)[None])


# --------------------------------------------------------------------------- plans
CASES = [("llama", 1), ("qwen2", 1), ("gpt2", 1), ("llama", 3), ("qwen2", 3), ("gpt2", 3)]


def _inputs(batch: int, device: str = "cpu"):
    if batch == 1:
        return {"input_ids": torch.tensor([[5, 6, 7, 8, 5, 6, 7]], device=device)}
    ids, mask = padded_batch()
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


def assert_plan_matches_generate(target, plan, batch: int, label: tuple, device: str = "cpu") -> None:
    """The plan's greedy output equals plain generate's at 1, 9 and 17 new tokens (tests/test_gpu.py too)."""
    for max_new in (1, 9, 17):
        kwargs = dict(**_inputs(batch, device), max_new_tokens=max_new, do_sample=False)
        expected = target.generate(**kwargs)
        got = target.generate(**kwargs, custom_generate=hfspec.generate, assistant_strategy=plan)
        assert torch.equal(got, expected), (*label, max_new)


@pytest.mark.parametrize("arch,batch", CASES)
@pytest.mark.parametrize("proposer", ["draft", "lookup", "none"])
def test_static_plan_is_token_identical(models, arch, batch, proposer):
    target, draft, _ = models[arch]
    strategy = {"draft": hfspec.DraftModel(draft, num_tokens=3), "lookup": hfspec.PromptLookup(num_tokens=4), "none": None}[proposer]
    plan = hfspec.compile(target, strategy, backend="eager", batch_size=batch, capacity=128)
    assert_plan_matches_generate(target, plan, batch, (arch, batch, proposer))


def test_inductor_plan_identical_and_never_recompiles(models):
    """One compiled target graph and one compiled draft graph, reused by every step of every call."""
    import torch._dynamo.utils as dynamo_utils

    target, draft, _ = models["llama"]
    # freezing on: the weights become constants, the KV buffers must stay graph inputs
    plan = hfspec.compile(target, hfspec.DraftModel(draft, num_tokens=3), backend="inductor", batch_size=3,
                          capacity=128, options={"freezing": True})
    lookup = plan.sharing(hfspec.PromptLookup(num_tokens=3))
    kwargs = dict(**_inputs(3), max_new_tokens=12, do_sample=False)
    expected = target.generate(**kwargs)
    assert torch.equal(target.generate(**kwargs, custom_generate=hfspec.generate, assistant_strategy=plan), expected)
    assert plan.compiles == 2  # the target's verify graph and the draft's one-token graph
    graphs_after_first = dynamo_utils.counters["stats"]["unique_graphs"]
    calls_before = plan.target.graph_calls
    for strategy, max_new in ((plan, 20), (lookup, 20), (plan, 5)):
        kwargs = dict(**_inputs(3), max_new_tokens=max_new, do_sample=False)
        got = target.generate(**kwargs, custom_generate=hfspec.generate, assistant_strategy=strategy)
        assert torch.equal(got, target.generate(**kwargs))
    assert plan.target.graph_calls > calls_before + 10  # the graph really ran
    assert plan.compiles == 2 and lookup.compiles == 1  # the lookup plan shares the target graph, has no draft
    assert dynamo_utils.counters["stats"]["unique_graphs"] == graphs_after_first
    assert plan.compile_seconds > 0


def test_sampling_through_a_static_plan_matches_the_eager_engine(models):
    """Same seed, same random draws: the static plan samples exactly what the eager engine samples."""
    target, draft, _ = models["qwen2"]
    strategy = hfspec.DraftModel(draft, num_tokens=3)
    plan = hfspec.compile(target, strategy, backend="eager", batch_size=3, capacity=128)
    kwargs = dict(**_inputs(3), max_new_tokens=15, do_sample=True, temperature=1.3, top_k=0)
    torch.manual_seed(7)
    eager = target.generate(**kwargs, custom_generate=hfspec.generate, assistant_strategy=strategy)
    torch.manual_seed(7)
    static = target.generate(**kwargs, custom_generate=hfspec.generate, assistant_strategy=plan)
    assert torch.equal(eager, static)


# --------------------------------------------------------------------------- bad input
def test_plan_refuses_other_model_batch_and_capacity_before_any_forward(models):
    target, draft, _ = models["llama"]
    other = tiny_model("llama", seed=3)
    plan = hfspec.compile(target, hfspec.DraftModel(draft, num_tokens=3), backend="eager", batch_size=1, capacity=32)
    calls, handle = _forward_counter(target)
    try:
        with pytest.raises(hfspec.ConfigurationError, match="another model"):
            other.generate(input_ids=torch.tensor([[5, 6]]), max_new_tokens=4, custom_generate=hfspec.generate,
                           assistant_strategy=plan)
        with pytest.raises(hfspec.ConfigurationError, match="batch size 1"):
            target.generate(**_inputs(3), max_new_tokens=4, custom_generate=hfspec.generate, assistant_strategy=plan)
        with pytest.raises(hfspec.ConfigurationError, match="capacity=32"):
            target.generate(input_ids=torch.tensor([[5, 6]]), max_new_tokens=40, custom_generate=hfspec.generate,
                            assistant_strategy=plan)
    finally:
        handle.remove()
    assert calls == []


def test_unsupported_attention_and_missing_backends_are_refused():
    config = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1)
    model = LlamaForCausalLM(config).eval()
    model.config._attn_implementation = "flex_attention"
    with pytest.raises(hfspec.ConfigurationError, match="explicit"):
        hfspec.compile(model, hfspec.PromptLookup())
    with pytest.raises(hfspec.ConfigurationError, match="explicit"):
        model.generate(input_ids=torch.tensor([[1, 2, 3]]), max_new_tokens=2, custom_generate=hfspec.generate,
                       assistant_strategy=hfspec.PromptLookup())
    target = tiny_model("llama")
    with pytest.raises(hfspec.ConfigurationError, match="backend must be one of"):
        hfspec.compile(target, None, backend="tvm")
    try:
        import torch_tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(hfspec.ConfigurationError, match="Torch-TensorRT"):
            hfspec.compile(target, None, backend="tensorrt")
    if not torch.cuda.is_available():
        with pytest.raises(hfspec.ConfigurationError, match="CUDA"):
            hfspec.compile(target, None, backend="cudagraphs")
    with pytest.raises(hfspec.ConfigurationError, match="already a CompiledPlan"):
        hfspec.compile(target, hfspec.compile(target, None, backend="eager"))


def test_plan_sharing_with_another_draft_keeps_the_target_graph(models):
    target, draft, _ = models["llama"]
    plan = hfspec.compile(target, hfspec.PromptLookup(num_tokens=3), backend="eager", capacity=64)
    other = plan.sharing(hfspec.DraftModel(perturbed_copy(target, 0.02), num_tokens=3))
    again = other.sharing(hfspec.DraftModel(draft, num_tokens=3))
    assert plan.draft is None and other.draft is not None and again.draft is not other.draft
    assert other.target is plan.target and again.target is plan.target
    kwargs = dict(input_ids=torch.tensor([[5, 6, 7, 5, 6]]), max_new_tokens=10, do_sample=False)
    for strategy in (plan, other, again):
        assert torch.equal(target.generate(**kwargs, custom_generate=hfspec.generate, assistant_strategy=strategy),
                           target.generate(**kwargs))


@pytest.mark.parametrize(
    "arch,batch,backend", [(a, b, "eager") for a, b in CASES] + [("llama", 1, "inductor"), ("llama", 3, "inductor")]
)
def test_bfloat16_draft_under_a_float32_target(models, arch, batch, backend):
    """The draft's dtype is free (it changes only q): a bf16 draft of a float32 target, eagerly and
    through a plan (its own bf16 one-token graph), gives plain generate's tokens. Inductor on llama only
    (each compile costs seconds)."""
    target, draft, _ = models[arch]
    draft16 = copy.deepcopy(draft).to(torch.bfloat16)
    eager = hfspec.DraftModel(draft16, num_tokens=3)
    plan = hfspec.compile(target, eager, backend=backend, batch_size=batch, capacity=128,
                          options={"freezing": True} if backend == "inductor" else None)
    kwargs = dict(**_inputs(batch), max_new_tokens=14, do_sample=False)
    expected = target.generate(**kwargs)
    for strategy in (eager, plan):
        stats = hfspec.SpecStats()
        got = target.generate(**kwargs, custom_generate=hfspec.generate, assistant_strategy=strategy,
                              speculation_stats=stats)
        assert torch.equal(got, expected), (arch, batch, backend, strategy)
        assert stats.accepted > 0  # the bf16 draft really drafted, and was right sometimes


def test_exported_verify_program_runs_and_matches_eager(models):
    """The torch.export artifact of the fixed-shape verify step (what Torch-TensorRT consumes) runs
    on CPU, matches the eager forward and writes the KV buffers it is given."""
    from hfspec.lowering import export_verify
    from hfspec.masks import as_attention_mask

    target, _, _ = models["llama"]
    plan = hfspec.compile(target, hfspec.PromptLookup(num_tokens=3), backend="eager", capacity=16)
    target.generate(input_ids=torch.tensor([[5, 6, 7]]), max_new_tokens=2, custom_generate=hfspec.generate,
                    assistant_strategy=plan)
    program = export_verify(plan)
    store = plan.target.store
    keys = [torch.zeros_like(layer.keys) for layer in store.cache.layers]
    values = [torch.zeros_like(layer.values) for layer in store.cache.layers]
    tokens = torch.tensor([[5, 6, 7, 8]])
    visible = torch.zeros((1, 4, 16), dtype=torch.bool)
    visible[0, :, :4] = torch.ones(4, 4).tril().bool()
    mask = as_attention_mask(visible, target, target.dtype).contiguous()
    got = program.module()(tokens, torch.arange(4)[None], mask, torch.arange(4), keys, values)
    expected = target(input_ids=tokens).logits
    assert torch.allclose(got, expected, atol=1e-10)
    assert all(float(k[:, :, :4].abs().sum()) > 0 and float(k[:, :, 4:].abs().sum()) == 0 for k in keys)


class _Recording:
    """A strategy whose sessions ask for the target's top-k and keep every StepResult they get."""

    def __init__(self, inner, k: int = 3) -> None:
        self.inner, self.k, self.results = inner, k, []
        self.num_tokens = inner.num_tokens
        self.proposes_trees = inner.proposes_trees

    def validate(self, target, generation_config):
        self.inner.validate(target, generation_config)

    def start(self, ctx):
        outer, session = self, self.inner.start(ctx)

        class Session:
            target_top_k = outer.k

            def propose(self, view):
                return session.propose(view)

            def on_commit(self, result):
                outer.results.append(result)
                session.on_commit(result)

        return Session()


def _check_top(results, k: int) -> int:
    """Greedy: the top-1 at each column of the accepted path is the token committed there."""
    checked = 0
    for result in results:
        top = result.target_top
        assert top is not None and top.shape[-1] == k
        assert bool((top[..., 0] != top[..., 1]).all())
        for row in range(top.shape[0]):
            for j in range(int(result.num_accepted[row]) + 1):  # rows that never reached it: none
                assert int(top[row, int(result.path[row, j]), 0]) == int(result.emitted[row, j])
                checked += 1
    return checked


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("tree", [False, True])
def test_sessions_receive_the_targets_top_k_at_every_verified_column(models, batch, tree):
    """Greedy: at every column of the accepted path the target's top-1 is the committed token (the
    accepted drafts, then the next token); the other top-k entries are other tokens."""
    target, draft, _ = models["llama"]
    spec = hfspec.TreeSpec(top_k=2, depth=3) if tree else None
    strategy = _Recording(hfspec.DraftModel(draft, num_tokens=5, tree=spec))
    kwargs = dict(**_inputs(batch), max_new_tokens=12, do_sample=False)
    got = target.generate(**kwargs, custom_generate=hfspec.generate, assistant_strategy=strategy)
    assert torch.equal(got, target.generate(**kwargs))
    assert _check_top(strategy.results, 3) >= 12


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("planted", [False, True])
def test_jump_forward_passes_target_top_into_the_trees_node_space(batch, planted, monkeypatch):
    """Under grammar= a tree hangs from the forced trunk: its session sees target_top (and the path)
    shifted into its own node space, where the same greedy law holds. Planted bug: target_top left
    in the engine's node space; the same check must fail."""
    from dataclasses import replace

    from hfspec.proposers import jump_forward
    from hfspec.testing import tiny_json_tokenizer

    if planted:
        shift = jump_forward.past_trunk
        monkeypatch.setattr(jump_forward, "past_trunk", lambda r, t: replace(shift(r, t), target_top=r.target_top))

    tok = tiny_json_tokenizer()
    target = tiny_model("llama", vocab_size=64, logit_scale=4.0, seed=3)
    draft = perturbed_copy(target, 0.05)
    recording = _Recording(hfspec.DraftModel(draft, num_tokens=5, tree=hfspec.TreeSpec(top_k=2, depth=3)), k=4)
    spec = hfspec.Regex(r'\{"abc": [0-9]{1,3}, "xyz": (true|false), "zz": null\}', tokenizer=tok)
    ids = torch.tensor([[5, 9, 12, 3, 7]] * batch)
    out = target.generate(input_ids=ids, custom_generate=hfspec.generate, assistant_strategy=recording, grammar=spec,
                          max_new_tokens=40, do_sample=False)
    plain = target.generate(input_ids=ids, custom_generate=hfspec.generate, grammar=spec, max_new_tokens=40,
                            do_sample=False, jump_forward=False)
    assert torch.equal(out, plain)
    if planted:
        with pytest.raises(AssertionError):
            _check_top(recording.results, 4)
    else:
        assert _check_top(recording.results, 4) > 0


def test_target_top_is_only_computed_when_asked(models):
    target, _, _ = models["llama"]
    strategy = _Recording(hfspec.PromptLookup(num_tokens=3), k=0)
    target.generate(input_ids=torch.tensor([[5, 6, 7, 5, 6]]), max_new_tokens=6, do_sample=False,
                    custom_generate=hfspec.generate, assistant_strategy=strategy)
    assert strategy.results and all(r.target_top is None for r in strategy.results)


def test_draft_graph_computes_in_its_compute_dtype():
    """draft_compute_dtype=bf16: the draft's one-token graph runs under autocast (its logits come out
    bf16) while its KV buffers and eager forwards stay float32; greedy output is plain generate's,
    with no recompiles; sharing with another compute dtype gives the draft a graph of its own."""
    target = tiny_model("llama", dtype=torch.float32, logit_scale=8.0, eos_token_id=None)  # autocast leaves float64 alone
    draft = perturbed_copy(target, 0.01)
    plan = hfspec.compile(target, hfspec.DraftModel(draft, num_tokens=3), backend="inductor", batch_size=3,
                          capacity=128, options={"freezing": True}, draft_compute_dtype=torch.bfloat16)
    seen = []
    graph = plan.draft.graph
    plan.draft.graph = lambda *args: seen.append((out := graph(*args)).dtype) or out
    for max_new in (12, 20):
        kwargs = dict(**_inputs(3), max_new_tokens=max_new, do_sample=False)
        got = target.generate(**kwargs, custom_generate=hfspec.generate, assistant_strategy=plan)
        assert torch.equal(got, target.generate(**kwargs))
    assert seen and set(seen) == {torch.bfloat16}
    assert all(layer.keys.dtype == torch.float32 for layer in plan.draft.store.cache.layers)
    assert plan.compiles == 2
    assert plan.sharing(hfspec.PromptLookup()).draft is None
    same = plan.sharing(hfspec.DraftModel(draft, num_tokens=3))
    assert same.draft is plan.draft
    other = plan.sharing(hfspec.DraftModel(draft, num_tokens=3), draft_compute_dtype=None)
    assert other.draft is not plan.draft and other.draft.compute_dtype is None
    for bad in (torch.int8, "bfloat16"):
        with pytest.raises(hfspec.ConfigurationError, match="draft_compute_dtype"):
            hfspec.compile(target, hfspec.DraftModel(draft), backend="eager", draft_compute_dtype=bad)


def test_inductor_options_default_to_the_cpu_ones_on_cpu_only(models):
    """options=None means the measured CPU options (C++ GEMM templates) for a model on the CPU, and
    inductor's own anywhere else (checked with a meta-device copy: no forward runs); explicit options win."""
    from hfspec.kv import StaticStore
    from hfspec.lowering.plan import CPU_INDUCTOR_OPTIONS, GraphRunner, _compiler

    target, _, _ = models["llama"]
    assert GraphRunner(target, StaticStore(2, 1, 16), 1, _compiler("inductor", None)).inductor_options == CPU_INDUCTOR_OPTIONS
    assert GraphRunner(target, StaticStore(2, 1, 16), 1, _compiler("inductor", {"freezing": True})).inductor_options == {
        "freezing": True}
    meta = copy.deepcopy(target).to("meta")
    assert GraphRunner(meta, StaticStore(2, 1, 16, "meta"), 1, _compiler("inductor", None)).inductor_options == {}
    assert GraphRunner(target, StaticStore(2, 1, 16), 1, _compiler("eager", None)).inductor_options == {}
