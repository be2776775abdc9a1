"""Token trees end to end: tree DraftModel (EAGLE-2 style) and multi-branch PromptLookup.

Evidence (DESIGN.md §7):

1. **Greedy identity** with plain ``model.generate`` for both tree proposers: llama, qwen2, gpt2;
   batch 1 and the padded batch of 3; max_new_tokens 5 and 24; an EOS inside drafts; a
   position-dependent processor (repetition penalty: per-node prefixes in the draft and in the
   verify); through the engine's eager runner and through ``hfspec.compile`` (static caches,
   fixed node budget; backend "eager", plus one inductor case).
2. **KV consistency**: before every tree step the draft's store must hold exactly what a fresh
   forward of the committed slots gives (keys of every layer, positions), dynamic and static.
3. **Trees are trees and pay**: recorded proposals have non-chain parents, and on a prompt with
   two competing earlier continuations the multi-branch lookup needs fewer target forwards
   (SpecStats counts, never timing).
4. **Exact sampled law**: a 6-token vocabulary, 4 new tokens, all 1296 continuations enumerated
   from full forwards with the same processors (repetition penalty 1.3, temperature 0.7,
   top-k 4); Pearson chi-square (``hfspec.testing_dist``) of ROWS x ROUNDS samples; a test
   fails when p < ALPHA = 1e-3 (its false-positive rate for a correct sampler; seeds are fixed,
   so the suite is deterministic). A planted bug (no residual update between siblings) must
   give p < ALPHA through the same test.
5. **Tree verify logits** of every node from one forward equal sequential decoding of the node's
   path (no cache), for eager and sdpa attention, llama and gpt2, dynamic and static stores,
   before and after committing a non-prefix path (``store.keep`` gathers).
"""

from __future__ import annotations

import pytest
import torch
from transformers import LogitsProcessorList
from transformers.generation.logits_process import (
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
)

import hfspec
from hfspec import testing_dist, tree_acceptance
from hfspec.engine_utils import position_ids
from hfspec.kv import DynamicStore, StaticStore
from hfspec.proposers import prompt_lookup
from hfspec.proposers.tree_draft import TreeDraftSession, TreeSpec
from hfspec.runner import ModelRunner
from hfspec.step import build_verify_batch
from hfspec.testing import tiny_model
from hfspec.tree import is_chain, path_tokens, trie
from tests.conftest import padded_batch

ARCHS = ("llama", "qwen2", "gpt2")


def spec(model, strategy, **kwargs):
    return model.generate(custom_generate=hfspec.generate, assistant_strategy=strategy, **kwargs)


def tree_strategies(close):
    return {
        "draft_tree": hfspec.DraftModel(close, num_tokens=6, tree=TreeSpec(top_k=2, depth=3)),
        "draft_tree_wide": hfspec.DraftModel(close, num_tokens=5, tree=TreeSpec(top_k=3, depth=2)),
        "draft_tree_sampled_spine": hfspec.DraftModel(close, num_tokens=6, do_sample=True, tree=TreeSpec(top_k=2, depth=3)),
        "lookup_branches": hfspec.PromptLookup(num_tokens=6, num_branches=3, min_ngram=1),
    }


def eos_at(model, ids, mask, position: int) -> int:
    """A token plain greedy decoding of row 0 first emits at ``position`` or later (used as EOS)."""
    generated = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=position + 12)[0, ids.shape[1] :]
    generated = generated.tolist()
    for pos in range(position, len(generated)):
        if generated[pos] not in generated[:pos]:
            return generated[pos]
    return generated[position]


@pytest.fixture
def recorded(monkeypatch):
    """Proposals of every tree session, recorded as (ids, parents, lengths)."""
    seen: list = []
    for cls in (TreeDraftSession, prompt_lookup._TreeLookupSession):
        real = cls.propose

        def propose(self, view, _real=real):
            proposal = _real(self, view)
            seen.append(proposal)
            return proposal

        monkeypatch.setattr(cls, "propose", propose)
    return seen


def has_tree(proposals) -> bool:
    return any(p.parents is not None and p.ids.shape[1] and not is_chain(p.parents) for p in proposals)


# ---------------------------------------------------------------- 1. greedy identity
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("max_new, with_eos", [(24, False), (24, True), (5, False)])
def test_greedy_identical(models, recorded, arch, batch, max_new, with_eos):
    target, close, _ = models[arch]
    ids, mask = padded_batch()
    ids, mask = ids[-batch:], mask[-batch:]
    kwargs = dict(input_ids=ids, attention_mask=mask, max_new_tokens=max_new, do_sample=False)
    if with_eos:  # rows stop at different steps, often inside an accepted path
        kwargs["eos_token_id"] = eos_at(target, ids, mask, position=5)
    expected = target.generate(**kwargs)
    for name, strategy in tree_strategies(close).items():
        got = spec(target, strategy, **kwargs)
        assert torch.equal(got, expected), f"{arch} batch={batch} max_new={max_new} eos={with_eos} {name}"
    assert has_tree(recorded)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_greedy_identical_with_position_dependent_processor(models, arch):
    """Repetition penalty: each node's scores depend on its own path (draft and verify alike)."""
    target, close, _ = models[arch]
    ids, mask = padded_batch()
    kwargs = dict(input_ids=ids, attention_mask=mask, max_new_tokens=16, do_sample=False, repetition_penalty=1.5)
    expected = target.generate(**kwargs)
    for name, strategy in tree_strategies(close).items():
        assert torch.equal(spec(target, strategy, **kwargs), expected), name


@pytest.mark.parametrize("arch", ARCHS)
def test_perfect_draft_tree_identical_and_accepts(models, arch):
    """The target as its own draft: every step accepts at least the top-1 child."""
    target, _, _ = models[arch]
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    kwargs = dict(input_ids=ids, max_new_tokens=20, do_sample=False)
    stats = hfspec.SpecStats()
    strategy = hfspec.DraftModel(target, num_tokens=6, tree=TreeSpec(top_k=2, depth=4))
    assert torch.equal(spec(target, strategy, speculation_stats=stats, **kwargs), target.generate(**kwargs))
    assert stats.accepted >= stats.target_forwards - 1  # the last step may have no room to draft


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("max_new", [5, 24])
def test_compiled_eager_plan_greedy_identical(models, recorded, arch, max_new):
    """Static caches (target and draft), fixed node budget, the plan's graph runners (no compile)."""
    target, close, _ = models[arch]
    ids, mask = padded_batch()
    kwargs = dict(input_ids=ids, attention_mask=mask, max_new_tokens=max_new, do_sample=False)
    expected = target.generate(**kwargs)
    for name, strategy in tree_strategies(close).items():
        plan = hfspec.compile(target, strategy, backend="eager", batch_size=3, capacity=256)
        assert torch.equal(spec(target, plan, **kwargs), expected), f"{arch} {name}"
        assert torch.equal(spec(target, plan, **kwargs), expected), f"{arch} {name} (plan reused)"
    assert has_tree(recorded)


def test_compiled_inductor_tree_draft_greedy_identical(models):
    """One compiled case (~25 s): the target's tree-masked verify graph and the draft's one-token
    graph (frontiers of one node run it with the tree mask) under inductor's default options."""
    target, close, _ = models["llama"]
    ids = torch.tensor([[5, 6, 7, 5, 6, 8, 5, 6]])
    kwargs = dict(input_ids=ids, max_new_tokens=12, do_sample=False)
    # budget 3 with top_k 2: depth-2 frontiers hold one node, so the draft graph sees tree masks
    plan = hfspec.compile(
        target, hfspec.DraftModel(close, num_tokens=3, tree=TreeSpec(top_k=2, depth=3)),
        backend="inductor", options={}, batch_size=1, capacity=64,
    )
    assert torch.equal(spec(target, plan, **kwargs), target.generate(**kwargs))
    assert plan.compiles == 2 and plan.target.graph_calls > 0 and plan.draft.graph_calls > 0


# ---------------------------------------------------------------- 2. the draft's KV store
@pytest.fixture
def checked_store(monkeypatch):
    """Before each tree step, compare the draft store with a fresh forward of the committed slots."""
    log = {"checks": 0, "gathered": 0}
    real_propose, real_commit = TreeDraftSession.propose, TreeDraftSession.on_commit

    def propose(self, view):
        store = self.runner.store
        seen = min(store.length, view.slot_tokens.shape[1])
        if seen:
            fresh = ModelRunner(self.model, DynamicStore(view.slot_tokens.shape[0]))
            mask = view.slot_mask[:, :seen]
            fresh.chain(view.slot_tokens[:, :seen], position_ids(mask), mask.bool(), keep=1)
            valid = mask.bool()
            assert torch.equal(store.pos[:, :seen][valid], position_ids(mask)[valid])
            for mine, ref in zip(store.cache.layers, fresh.store.cache.layers, strict=True):
                for a, b in ((mine.keys, ref.keys), (mine.values, ref.values)):
                    a, b = a[:, :, :seen].transpose(1, 2)[valid], b.transpose(1, 2)[valid]
                    torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
            log["checks"] += 1
        return real_propose(self, view)

    def on_commit(self, result):
        if self.node_columns is not None:
            real = torch.arange(result.path.shape[1])[None] <= result.num_accepted[:, None]
            off_chain = real & (result.path != torch.arange(result.path.shape[1])[None])
            log["gathered"] += int(off_chain.any())
        real_commit(self, result)

    monkeypatch.setattr(TreeDraftSession, "propose", propose)
    monkeypatch.setattr(TreeDraftSession, "on_commit", on_commit)
    return log


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("compiled", [False, True], ids=["dynamic", "static"])
@pytest.mark.parametrize("sample", [False, True], ids=["greedy", "sampled"])
def test_draft_store_holds_exactly_the_committed_slots(models, checked_store, arch, compiled, sample):
    target, close, _ = models[arch]
    ids, mask = padded_batch()
    kwargs = dict(input_ids=ids, attention_mask=mask, max_new_tokens=24, do_sample=sample)
    strategy = hfspec.DraftModel(close, num_tokens=6, tree=TreeSpec(top_k=3, depth=3))
    if compiled:
        strategy = hfspec.compile(target, strategy, backend="eager", batch_size=3, capacity=256)
    torch.manual_seed(0)
    out = spec(target, strategy, **kwargs)
    if not sample:
        assert torch.equal(out, target.generate(**kwargs))
    assert checked_store["checks"] >= 3
    assert checked_store["gathered"] >= 1  # some step committed a path off the first-child chain


# ---------------------------------------------------------------- 3. trees, and tau
def competing_prompt(model) -> torch.Tensor:
    """``a b D.. 3 a b C.. 4 a b`` where C is what greedy decoding of this very prompt continues with.

    Chain lookup copies the earliest match of the suffix ``a b`` (the decoy D); a tree holds D
    and C. C is found as a fixed point of "C := greedy continuation" (it converges here).
    """
    a, b, decoy, cont = 40, 41, [50, 51, 52, 53, 54, 55], [10, 11, 12, 13, 14, 15]
    for _ in range(20):
        prompt = torch.tensor([[a, b, *decoy, 3, a, b, *cont, 4, a, b]])
        greedy = model.generate(input_ids=prompt, max_new_tokens=len(cont), do_sample=False)
        if greedy[0, prompt.shape[1] :].tolist() == cont:
            return prompt
        cont = greedy[0, prompt.shape[1] :].tolist()
    raise AssertionError("no fixed point")


def test_branches_raise_tokens_per_target_forward(models, recorded):
    target = models["qwen2"][0]
    prompt = competing_prompt(target)
    kwargs = dict(input_ids=prompt, max_new_tokens=16, do_sample=False)
    expected = target.generate(**kwargs)
    chain, tree = hfspec.SpecStats(), hfspec.SpecStats()
    assert torch.equal(spec(target, hfspec.PromptLookup(num_tokens=8), speculation_stats=chain, **kwargs), expected)
    assert not recorded  # num_branches=1 is the chain session
    strategy = hfspec.PromptLookup(num_tokens=8, num_branches=3, min_ngram=1)
    assert torch.equal(spec(target, strategy, speculation_stats=tree, **kwargs), expected)
    assert has_tree(recorded)
    first = recorded[0]
    assert sorted(first.ids[0, first.parents[0] == -1].tolist()) == sorted([50, int(expected[0, prompt.shape[1]])])
    assert chain.per_step_emitted[0] == 1 and tree.per_step_emitted[0] >= 4  # the decoy vs the tree
    assert tree.target_forwards < chain.target_forwards
    assert tree.tokens_per_step > chain.tokens_per_step
    assert tree.emitted == chain.emitted == 16


def test_default_lookup_is_the_chain(models):
    """num_branches=1 keeps today's proposals exactly: chain session, parents None."""
    target = models["llama"][0]
    strategy = hfspec.PromptLookup(num_tokens=4)
    assert repr(strategy) == "PromptLookup(num_tokens=4, max_ngram=3, min_ngram=2)"
    session = strategy.start(_ctx(target, 1))
    assert type(session).__name__ == "_LookupSession"


def test_trie_merges_prefixes_and_keeps_breadth_first():
    tokens, parents, owners = trie([[1, 2, 3, 4], [1, 2, 5], [6, 7]], budget=10)
    assert (tokens, parents, owners) == ([1, 6, 2, 7, 3, 5, 4], [-1, -1, 0, 1, 2, 2, 4], [0, 2, 0, 2, 0, 1, 0])
    tokens, parents, _ = trie([[1, 2, 3, 4], [6, 7, 8]], budget=5)
    assert (tokens, parents) == ([1, 6, 2, 7, 3], [-1, -1, 0, 1, 2])
    assert trie([[1, 2, 3]], budget=2)[:2] == ([1, 2], [-1, 0])  # one branch: a chain
    assert trie([], budget=4) == ([], [], [])


def test_find_continuations_distinct_best_first():
    seq = torch.tensor([1, 2, 3, 9, 1, 2, 4, 8, 1, 2, 3, 9, 1, 5, 2])
    found = prompt_lookup.find_continuations(seq, 3, 1, 3, num_branches=4)
    first, source = prompt_lookup.find_continuation(seq, 3, 1, 3)
    assert found[0] == (first.tolist(), source) == ([3, 9, 1], 2)
    # latest other occurrence first; the copy at 10 repeats [3, 9, 1] (no new node): skipped
    assert found[1:] == [([4, 8, 1], 6)]
    assert prompt_lookup.find_continuations(seq, 3, 2, 3, num_branches=4) == []  # suffix "5 2" unseen


def test_engine_accept_tree_nothing_accepted_keeps_the_root_column():
    """Regression: a tree step in which no row accepts a node still commits the root (path width 1)."""
    from hfspec.engine import accept
    from hfspec.step import SoftmaxTarget

    parents, num_nodes = torch.tensor([[-1, -1, 0]] * 2), torch.tensor([3, 2])
    tokens = torch.tensor([[4, 5, 6], [4, 5, 0]])
    batch = build_verify_batch(torch.zeros((2, 0), dtype=torch.long), torch.zeros((2, 0), dtype=torch.long), 0,
                               torch.tensor([1, 2]), tokens, parents, num_nodes)
    scores = torch.full((2, 4, 8), -5.0)
    scores[:, :, 7] = 5.0  # the target wants token 7 everywhere: no draft matches
    result = accept(scores, batch, None, False, SoftmaxTarget().probs)
    assert result.path.tolist() == [[0], [0]] and result.num_accepted.tolist() == [0, 0]
    assert result.emitted[:, 0].tolist() == [7, 7]


# ---------------------------------------------------------------- configuration errors
def _ctx(target, batch, grammar=None):
    from hfspec.processors import PrefixProcessor
    from hfspec.proposers.base import SessionContext

    return SessionContext(
        target=target, generation_config=target.generation_config, processor=PrefixProcessor(None),
        do_sample=False, vocab_size=64, batch_size=batch, grammar=grammar,
    )


def test_bad_configurations_are_refused(models):
    target, close, _ = models["llama"]
    for bad in (dict(top_k=0), dict(depth=0), dict(top_k=1.5), dict(depth=True)):
        with pytest.raises(hfspec.ConfigurationError, match="TreeSpec"):
            TreeSpec(**bad)
    with pytest.raises(hfspec.ConfigurationError, match="TreeSpec"):
        hfspec.DraftModel(close, tree=(2, 4))
    for bad in (0, True, 2.0):
        with pytest.raises(hfspec.ConfigurationError, match="num_branches"):
            hfspec.PromptLookup(num_branches=bad)


# ---------------------------------------------------------------- 4. exact sampled law
ALPHA = 1e-3
VOCAB, NEW_TOKENS, ROWS, ROUNDS = 6, 4, 4000, 2
PROMPT = [1, 2, 3, 1, 2, 4, 1, 2]  # suffix "1 2" continued earlier by 3 ... and by 4 ...: two branches
SAMPLING = dict(do_sample=True, temperature=0.7, top_k=4, top_p=1.0, repetition_penalty=1.3)


@pytest.fixture(scope="module")
def small_pair():
    target = tiny_model("llama", vocab_size=VOCAB, logit_scale=3.0, eos_token_id=None, seed=11)
    draft = tiny_model("llama", vocab_size=VOCAB, logit_scale=3.0, eos_token_id=None, seed=12)
    return target, draft


@pytest.fixture(scope="module")
def exact(small_pair):
    """P(continuation) from full (cache-free) forwards, processors applied as HF orders them."""
    procs = LogitsProcessorList(
        [RepetitionPenaltyLogitsProcessor(1.3), TemperatureLogitsWarper(0.7), TopKLogitsWarper(4)]
    )
    prob: dict[tuple[int, ...], float] = {(): 1.0}
    for _ in range(NEW_TOKENS):
        prefixes = list(prob)
        ids = torch.tensor([PROMPT + list(pre) for pre in prefixes])
        with torch.no_grad():
            logits = small_pair[0](input_ids=ids).logits[:, -1].float()
        dist = torch.softmax(procs(ids, logits), dim=-1).double()
        prob = {pre + (t,): prob[pre] * float(dist[i, t]) for i, pre in enumerate(prefixes) for t in range(VOCAB)}
    return prob


def sampled_pvalue(model, strategy, exact, stats=None) -> float:
    counts: dict[tuple[int, ...], int] = {}
    ids = torch.tensor([PROMPT] * ROWS)
    for round_ in range(ROUNDS):
        torch.manual_seed(2000 + round_)
        out = spec(model, strategy, input_ids=ids, max_new_tokens=NEW_TOKENS, speculation_stats=stats, **SAMPLING)
        for row in out[:, len(PROMPT) :].tolist():
            counts[tuple(row)] = counts.get(tuple(row), 0) + 1
    cells = list(exact)
    return testing_dist.chi_square_pvalue([counts.get(c, 0) for c in cells], [exact[c] for c in cells])


SAMPLED = {  # 4 new tokens: the first step may draft 3 nodes (the engine caps nodes by the room left)
    "draft_tree_sampled_spine": lambda d: hfspec.DraftModel(d, num_tokens=4, tree=TreeSpec(top_k=2, depth=2)),
    "draft_tree_top_k": lambda d: hfspec.DraftModel(d, num_tokens=4, do_sample=False, tree=TreeSpec(top_k=3, depth=2)),
    "lookup_branches": lambda d: hfspec.PromptLookup(num_tokens=4, num_branches=3, max_ngram=2, min_ngram=1),
}


@pytest.mark.parametrize("name", list(SAMPLED))
def test_sampled_distribution_is_exact(small_pair, exact, recorded, name):
    target, draft = small_pair
    stats = hfspec.SpecStats()
    pvalue = sampled_pvalue(target, SAMPLED[name](draft), exact, stats)
    assert pvalue > ALPHA
    assert has_tree(recorded)  # trees were verified, not only chains
    assert 0 < stats.accepted < stats.drafted
    if name == "draft_tree_sampled_spine":  # mixed trees: sampled spine nodes (soft q) and one-hot siblings
        probs = [p.probs for p in recorded if p.probs is not None and not is_chain(p.parents)]
        assert probs and any(bool(((q > 0).sum(-1) > 1).any()) for q in probs)


@pytest.mark.parametrize("name", ["draft_tree_sampled_spine", "lookup_branches"])
def test_planted_bug_no_residual_between_siblings_is_rejected(small_pair, exact, monkeypatch, name):
    """Every sibling judged against the node's original p (and the correction drawn from it)."""
    monkeypatch.setattr(tree_acceptance, "residual_distribution", lambda resid, draft: resid)
    target, draft = small_pair
    pvalue = sampled_pvalue(target, SAMPLED[name](draft), exact)
    assert pvalue < ALPHA


# ---------------------------------------------------------------- 5. tree verify logits
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("store_kind", ["dynamic", "static"])
@torch.no_grad()
def test_tree_logits_equal_sequential_decoding(arch, attn, store_kind):
    model = tiny_model(arch, seed=5)
    model.set_attn_implementation(attn)
    ids, mask = padded_batch()
    b = ids.shape[0]
    store = DynamicStore(b) if store_kind == "dynamic" else StaticStore(model.config.num_hidden_layers, b, 64)
    budget = None if store_kind == "dynamic" else 8
    runner = ModelRunner(model, store)
    gen = torch.Generator().manual_seed(0)
    rows = [ids[r][mask[r].bool()].tolist() for r in range(b)]  # each row's real tokens (pending last)
    # relative to the largest logit: HF's eager attention takes its softmax in float32 (measured
    # ~5e-8), sdpa stays in float64 (~4e-16); a wrong mask or position is off by O(1)
    tolerance = 1e-6 if attn == "eager" else 1e-12

    def check(batch, logits):
        for col in range(int(batch.num_nodes.max()) + 1):
            paths = path_tokens(batch.node_tokens, batch.parents, batch.num_nodes, col)
            for r in range(b):
                if col > int(batch.num_nodes[r]):
                    continue
                with torch.no_grad():
                    ref = model(input_ids=torch.tensor([rows[r] + paths[r]])).logits[0, -1]
                err = float((logits[r, col] - ref).abs().max() / ref.abs().max())
                assert err < tolerance, (r, col, err)

    # step 1: prompt catch-up + root + tree (row 2 has padding nodes)
    parents = torch.tensor([[-1, -1, 0, 0, 1, 2, 2], [-1, 0, 1, -1, 3, 0, 5], [-1, 0, -1, 2, 0, 0, 0]])
    num_nodes = torch.tensor([7, 7, 4])
    tokens = torch.randint(2, 64, (b, 7), generator=gen)
    batch = build_verify_batch(ids[:, :-1], mask[:, :-1], 0, ids[:, -1], tokens, parents, num_nodes, budget)
    check(batch, runner.verify(batch))

    # commit a non-prefix path per row (root, then nodes), as the engine's store.keep does
    paths = [[1, 4], [3, 4], [2]]  # node indices: row 0 root->1->4, row 1 root->3->4, row 2 root->2
    base = ids.shape[1] - 1
    columns = torch.tensor([[0] + [n + 1 for n in p] + [0] * (2 - len(p)) for p in paths])
    valid = torch.tensor([[True] * (1 + len(p)) + [False] * (2 - len(p)) for p in paths])
    store.keep(base, columns, valid)
    slot_tokens = torch.cat([ids[:, :-1], ids[:, -1:], tokens.gather(1, (columns[:, 1:] - 1).clamp_min(0))], dim=1)
    slot_mask = torch.cat([mask[:, :-1], valid.long()], dim=1)
    for r, p in enumerate(paths):
        rows[r] = rows[r] + [int(tokens[r, n]) for n in p]
    pending = torch.randint(2, 64, (b,), generator=gen)
    rows = [row + [int(pending[r])] for r, row in enumerate(rows)]

    # step 2: no catch-up; a new tree behind holes (row 2 kept one node fewer)
    parents = torch.tensor([[-1, 0, 0, 1, -1, 4], [-1, -1, -1, 0, 1, 2], [-1, 0, 1, 2, 3, 4]])
    num_nodes = torch.tensor([6, 6, 5])
    tokens = torch.randint(2, 64, (b, 6), generator=gen)
    batch = build_verify_batch(slot_tokens, slot_mask, store.length, pending, tokens, parents, num_nodes, budget)
    check(batch, runner.verify(batch))
