"""grammar= inside the engine: identical to masked plain decoding, for every proposer.

The reference is independent of hfspec's matcher code: a HF ``LogitsProcessor`` that re-parses
each row from scratch with a fresh xgrammar matcher at every step (slow, obviously right) run
by plain ``model.generate``. Greedy outputs must be token-identical; sampled outputs must follow
the exactly enumerated masked distribution (chi-square, ALPHA per test), and a planted bug
(draft positions masked with the committed state) must be rejected by the same test.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import xgrammar as xgr
from transformers import LogitsProcessorList

import hfspec
import hfspec.acceptance
from hfspec import testing_dist
from hfspec.grammar import call as grammar_call
from hfspec.grammar.compile import compile_spec
from hfspec.grammar.rows import GrammarRows
from hfspec.testing import FromScratchMask, perturbed_copy, tiny_json_tokenizer, tiny_model

ALPHA = 1e-3
VOCAB = 64
EOS = 1


@pytest.fixture(scope="module")
def tok():
    return tiny_json_tokenizer()


def grammars(tok):
    return {
        "schema": hfspec.JSONSchema(
            {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"enum": ["x", "yz"]}},
             "required": ["a", "b"]},
            any_whitespace=False, tokenizer=tok,
        ),
        "regex": hfspec.Regex(r'\{"ab": [0-9]{1,3}, "c": (true|false)\}', tokenizer=tok),
        "ebnf": hfspec.EBNF('root ::= "[" item ("," item)* "]"\nitem ::= "null" | [0-9]+ | "\\"" [a-f]+ "\\""',
                            tokenizer=tok),
    }


def strategies(draft):
    """name -> (assistant_strategy, jump_forward). Under grammar= jump-forward is on by default, so
    "none", "lookup" and "draft" run wrapped in JumpForward; "/no-jump" runs them alone."""
    return {
        "none": (None, True),
        "none/no-jump": (None, False),
        "lookup": (hfspec.PromptLookup(num_tokens=4), True),
        "lookup/no-jump": (hfspec.PromptLookup(num_tokens=4), False),
        "draft": (hfspec.DraftModel(draft, num_tokens=4), True),
        "draft/no-jump": (hfspec.DraftModel(draft, num_tokens=4), False),
        "lookup-or-draft": (hfspec.LookupOrDraft(hfspec.PromptLookup(num_tokens=4),
                                                 hfspec.DraftModel(draft, num_tokens=4)), True),
        "jump": (hfspec.JumpForward(), True),
        "jump+draft": (hfspec.JumpForward(hfspec.DraftModel(draft, num_tokens=4)), True),
        # token trees: every node masked at its own state; under jump-forward the forced run is the trunk
        "draft-tree": (hfspec.DraftModel(draft, num_tokens=5, tree=hfspec.TreeSpec(top_k=2, depth=3)), True),
        "draft-tree/no-jump": (hfspec.DraftModel(draft, num_tokens=5, tree=hfspec.TreeSpec(top_k=2, depth=3)), False),
        "lookup-tree": (hfspec.PromptLookup(num_tokens=5, min_ngram=1, num_branches=3), True),
        "lookup-tree/no-jump": (hfspec.PromptLookup(num_tokens=5, min_ngram=1, num_branches=3), False),
    }


@pytest.fixture(scope="module")
def pairs():
    out = {}
    for arch in ("llama", "qwen2"):
        target = tiny_model(arch, vocab_size=VOCAB, logit_scale=4.0, seed=3)
        out[arch] = (target, perturbed_copy(target, 0.05))
    return out


def reference(model, ids, mask, spec, tok, max_new):
    compiled = compile_spec(spec, tok, VOCAB)
    return model.generate(
        input_ids=ids, attention_mask=mask, logits_processor=LogitsProcessorList(
            [FromScratchMask(compiled, ids.shape[1], vocab_size=VOCAB, stop_token_ids=[EOS])]
        ),
        max_new_tokens=max_new, do_sample=False,
    )


def run(model, ids, mask, spec, strategy, max_new, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", hfspec.IncompleteOutputWarning)
        return model.generate(
            input_ids=ids, attention_mask=mask, custom_generate=hfspec.generate, assistant_strategy=strategy,
            grammar=spec, max_new_tokens=max_new, do_sample=False, on_incomplete="flag", **kwargs,
        )


PROMPTS = {
    "single": (torch.tensor([[5, 9, 12, 3, 7]]), None),
    "batch3": (
        torch.tensor([[0, 0, 5, 9, 12], [3, 7, 4, 9, 21], [0, 0, 0, 0, 8]]),
        torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]]),
    ),
}


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("grammar", ["schema", "regex", "ebnf"])
@pytest.mark.parametrize("prompt", ["single", "batch3"])
def test_greedy_identical_to_masked_plain_generate(pairs, tok, arch, grammar, prompt):
    target, draft = pairs[arch]
    spec = grammars(tok)[grammar]
    ids, mask = PROMPTS[prompt]
    expected = reference(target, ids, mask, spec, tok, 24)
    for name, (strategy, jump_forward) in strategies(draft).items():
        out = run(target, ids, mask, spec, strategy, 24, jump_forward=jump_forward)
        assert out.tolist() == expected.tolist(), (name, tok.batch_decode(out[:, ids.shape[1]:]))


def test_completed_outputs_conform_and_report_flags(pairs, tok):
    target, draft = pairs["llama"]
    spec = hfspec.JSONSchema(
        {"type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 99},
                                          "b": {"enum": ["x", "yz"]}}, "required": ["a", "b"]},
        any_whitespace=False, tokenizer=tok,
    )
    ids, mask = PROMPTS["batch3"]
    out = run(target, ids, mask, spec, hfspec.DraftModel(draft, num_tokens=4), 40, return_dict_in_generate=True)
    assert isinstance(out, hfspec.GrammarDecoderOnlyOutput)
    texts = [tok.decode([t for t in row if t not in (0, EOS)]) for row in out.sequences[:, ids.shape[1]:].tolist()]
    assert out.grammar_complete.all(), texts
    for text in texts:
        assert spec.matches(text), text
        assert spec.parse(text)["b"] in ("x", "yz")


def test_incomplete_rows_raise_with_sequences_or_are_flagged(pairs, tok):
    target, _ = pairs["llama"]
    spec = grammars(tok)["schema"]
    ids = PROMPTS["single"][0]
    with pytest.raises(hfspec.IncompleteOutputError, match="max_new_tokens") as err:
        target.generate(ids, custom_generate=hfspec.generate, grammar=spec, max_new_tokens=3, do_sample=False)
    assert err.value.rows == [0] and err.value.sequences.shape == (1, ids.shape[1] + 3)
    with pytest.warns(hfspec.IncompleteOutputWarning):
        out = target.generate(ids, custom_generate=hfspec.generate, grammar=spec, max_new_tokens=3, do_sample=False,
                              on_incomplete="flag", return_dict_in_generate=True)
    assert out.grammar_complete.tolist() == [False] and out.grammar_valid.tolist() == [False]


FORCED_REGEX = r'\{"abc": [0-9]{1,3}, "xyz": (true|false), "zz": null\}'


@pytest.mark.parametrize("prompt", ["single", "batch3"])
def test_jump_forward_reads_forced_runs_in_fewer_draft_forwards(pairs, tok, prompt):
    """JumpForward(DraftModel) appends forced text after drafted tokens for free: same output as
    DraftModel, fewer draft-model forwards (a forced run costs one multi-token forward). A plain
    DraftModel under grammar= gets it by default: as many draft forwards as the explicit wrapper."""
    target, draft = pairs["llama"]
    spec = hfspec.Regex(FORCED_REGEX, tokenizer=tok)
    ids, mask = PROMPTS[prompt]
    calls = []
    hook = draft.register_forward_hook(lambda module, args, output: calls.append(1))
    try:
        counts, outs = {}, {}
        for name, (strategy, jump_forward) in {
            "draft/no-jump": (hfspec.DraftModel(draft, num_tokens=4), False),
            "draft": (hfspec.DraftModel(draft, num_tokens=4), True),
            "jump+draft": (hfspec.JumpForward(hfspec.DraftModel(draft, num_tokens=4)), True),
        }.items():
            calls.clear()
            outs[name] = run(target, ids, mask, spec, strategy, 40, jump_forward=jump_forward).tolist()
            counts[name] = len(calls)
    finally:
        hook.remove()
    expected = reference(target, ids, mask, spec, tok, 40).tolist()
    assert outs["jump+draft"] == outs["draft"] == outs["draft/no-jump"] == expected
    assert counts["jump+draft"] == counts["draft"] < counts["draft/no-jump"], counts


@pytest.mark.parametrize("prompt", ["single", "batch3"])
def test_grammar_without_strategy_jumps_forward_by_default(pairs, tok, prompt):
    """grammar= alone proposes the forced text: fewer target forwards than one per token, the
    same tokens; jump_forward=False is plain masked decoding, one forward per new token."""
    target, _ = pairs["llama"]
    spec = hfspec.Regex(FORCED_REGEX, tokenizer=tok)
    ids, mask = PROMPTS[prompt]
    expected = reference(target, ids, mask, spec, tok, 40).tolist()
    forwards = {}
    for jump_forward in (True, False):
        stats = hfspec.SpecStats()
        out = run(target, ids, mask, spec, None, 40, jump_forward=jump_forward, speculation_stats=stats)
        assert out.tolist() == expected, jump_forward
        forwards[jump_forward] = stats.target_forwards
    new_tokens = len(expected[0]) - ids.shape[1]
    assert forwards[False] == new_tokens
    assert forwards[True] < forwards[False] / 2, forwards


def test_tokens_prefixing_others_matches_brute_force():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from hfspec.grammar.compile import prefix_tokens, tokens_prefixing_others

    @settings(max_examples=200, deadline=None, derandomize=True)
    @given(st.lists(st.binary(max_size=4), max_size=12))
    def check(vocab):
        brute = {i for i, v in enumerate(vocab) if v and any(w != v and w.startswith(v) for w in vocab)}
        assert tokens_prefixing_others(vocab) == brute

    check()
    ids = prefix_tokens(tok := tiny_json_tokenizer(), VOCAB)
    by_text = {t: i for i, t in enumerate(tok.convert_ids_to_tokens(list(range(len(tok)))))}
    assert by_text["{"] in ids and by_text['"'] in ids and by_text["a"] in ids  # {" ", ab
    assert by_text["true"] not in ids and by_text['{"'] not in ids


# ----------------------------------------------------------------------------- sampling
# Language x[ab]{1,2}zabz: "x" and, after the first "z", "abz" are forced (jump-forward proposes
# them); "ab" is one token or two, so several token sequences spell the same text, as with real
# tokenizers, and a forced string has more than one tokenization.
SAMPLE_REGEX = r"x[ab]{1,2}zabz"
SAMPLE_PROMPT = [3, 27, 21, 22, 28, 29, 27]  # ids of '{', 'x', 'a', 'b', 'y', 'z', 'x' in the tiny tokenizer
TEMPERATURE, ROWS, ROUNDS, MAX_NEW = 0.8, 500, 4, 10


def exact_masked_distribution(model, compiled) -> dict[tuple[int, ...], float]:
    """P(token sequence ending in EOS) under masked sampling, by walking every grammatical prefix."""
    done: dict[tuple[int, ...], float] = {}
    frontier = {(): 1.0}
    while frontier:
        nxt: dict[tuple[int, ...], float] = {}
        for prefix, prob in frontier.items():
            matcher = xgr.GrammarMatcher(compiled, override_stop_tokens=[EOS])
            for token in prefix:
                assert matcher.accept_token(token)
            bitmask = xgr.allocate_token_bitmask(1, VOCAB)
            matcher.fill_next_token_bitmask(bitmask, 0)
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([SAMPLE_PROMPT + list(prefix)])).logits[:, -1].float()
            xgr.apply_token_bitmask_inplace(logits, bitmask)
            dist = torch.softmax(logits / TEMPERATURE, dim=-1)[0].double()
            for token in torch.nonzero(dist > 0).flatten().tolist():
                cell = prefix + (token,)
                (done if token == EOS else nxt)[cell] = prob * float(dist[token])
        frontier = nxt
    return done


def sample_counts(model, spec, strategy, jump_forward: bool = True) -> dict[tuple[int, ...], int]:
    counts: dict[tuple[int, ...], int] = {}
    ids = torch.tensor([SAMPLE_PROMPT] * ROWS)
    for round_ in range(ROUNDS):
        torch.manual_seed(500 + round_)
        out = model.generate(
            input_ids=ids, custom_generate=hfspec.generate, assistant_strategy=strategy, grammar=spec,
            max_new_tokens=MAX_NEW, do_sample=True, temperature=TEMPERATURE, top_k=0, top_p=1.0,
            jump_forward=jump_forward,
        )
        testing_dist.sequence_counts(out[:, len(SAMPLE_PROMPT):].tolist(), EOS, counts)
    return counts


pvalue = testing_dist.cells_pvalue


@pytest.fixture(scope="module")
def sampling_setup(tok):
    target = tiny_model("llama", vocab_size=VOCAB, logit_scale=2.0, seed=21)
    draft = perturbed_copy(target, 0.3, seed=4)
    spec = hfspec.Regex(SAMPLE_REGEX, tokenizer=tok)
    exact = exact_masked_distribution(target, compile_spec(spec, tok, VOCAB))
    assert len(exact) >= 14 and abs(sum(exact.values()) - 1) < 1e-6
    return target, draft, spec, exact


SAMPLED = ["none", "none/no-jump", "draft-sampled", "draft-sampled/no-jump", "draft-greedy", "lookup",
           "lookup/no-jump", "jump", "jump+draft", "draft-tree", "draft-tree/no-jump", "draft-tree-greedy",
           "lookup-tree", "lookup-tree/no-jump"]
TREE = hfspec.TreeSpec(top_k=2, depth=3)


@pytest.mark.parametrize("name", SAMPLED)
def test_sampled_constrained_distribution_is_exact(sampling_setup, name):
    """Every strategy, with jump-forward on by default (the wrapper api.generate builds) and off."""
    target, draft, spec, exact = sampling_setup
    base, _, off = name.partition("/")
    strategy = {
        "none": None,
        "draft-sampled": hfspec.DraftModel(draft, num_tokens=3),
        "draft-greedy": hfspec.DraftModel(draft, num_tokens=3, do_sample=False),
        "lookup": hfspec.PromptLookup(num_tokens=3, min_ngram=1),
        "jump": hfspec.JumpForward(),
        "jump+draft": hfspec.JumpForward(hfspec.DraftModel(draft, num_tokens=3)),
        "draft-tree": hfspec.DraftModel(draft, num_tokens=4, tree=TREE),
        "draft-tree-greedy": hfspec.DraftModel(draft, num_tokens=4, tree=TREE, do_sample=False),
        "lookup-tree": hfspec.PromptLookup(num_tokens=4, min_ngram=1, num_branches=3),
    }[base]
    counts = sample_counts(target, spec, strategy, jump_forward=not off)
    assert pvalue(counts, exact) >= ALPHA, sorted(counts.items())


class StaleMaskRows(GrammarRows):
    """Planted bug: every speculative position gets the committed position's mask."""

    def bitmasks(self, extra, n):
        first = super().bitmasks(extra[:, :0], 1)
        return first.repeat_interleave(n, dim=0).contiguous()


def test_planted_stale_mask_bug_is_rejected(sampling_setup, monkeypatch):
    target, draft, spec, exact = sampling_setup
    monkeypatch.setattr(grammar_call, "GrammarRows", StaleMaskRows)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            counts = sample_counts(target, spec, hfspec.DraftModel(draft, num_tokens=3), jump_forward=False)
        except (hfspec.GrammarError, hfspec.IncompleteOutputError):
            return  # the engine itself refused an ungrammatical commit: rejected
    assert pvalue(counts, exact) < ALPHA


def test_planted_tree_nodes_masked_at_the_committed_state_are_rejected(sampling_setup, monkeypatch):
    """Planted bug: every tree node of the verify step masked at the root's state (what the engine
    did before trees were walked through the grammar); the same test must reject it."""
    from hfspec.processors import PrefixProcessor

    target, draft, spec, exact = sampling_setup

    def root_masked(self, ids, lengths, paths, scores):
        return self(ids, lengths, ids[:, :0], scores)

    monkeypatch.setattr(PrefixProcessor, "at_paths", root_masked)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            counts = sample_counts(target, spec, hfspec.DraftModel(draft, num_tokens=4, tree=TREE), jump_forward=False)
        except (hfspec.GrammarError, hfspec.IncompleteOutputError):
            return  # the engine itself refused an ungrammatical commit: rejected
    assert pvalue(counts, exact) < ALPHA


def trusting_accept(drafts, num_drafts, draft_probs, target_probs, **kwargs):
    """Planted bug: take every draft as accepted ("forced tokens have p = 1") and sample the next."""
    rows = torch.arange(target_probs.shape[0])
    n = num_drafts.to(target_probs.device)
    return n, torch.multinomial(target_probs[rows, n], 1).squeeze(1)


def test_planted_unverified_jump_forward_is_rejected(sampling_setup, monkeypatch):
    """Jump-forward without verification forces the tokenizer's split of "abz": the model's
    other split ("a", "b", "z") vanishes, so the distribution over token sequences changes."""
    target, _, spec, exact = sampling_setup
    monkeypatch.setattr(hfspec.acceptance, "speculative_accept", trusting_accept)
    counts = sample_counts(target, spec, hfspec.JumpForward())
    assert pvalue(counts, exact) < ALPHA


def test_planted_forced_tokens_inheriting_draft_q_is_rejected(sampling_setup, monkeypatch):
    """JumpForward(DraftModel) appends forced text after sampled drafts; those columns must be
    verified with a one-hot q. Planted bug: they reuse the preceding draft's q (a forced token the
    draft found unlikely is then accepted with min(1, p/q) ~ 1 instead of p)."""
    from hfspec.proposers import jump_forward

    target, draft, spec, exact = sampling_setup
    real_pack = jump_forward._pack

    def inheriting_pack(rows, like, q_columns=None):
        q_columns, last = list(q_columns or []), None
        for i, q in enumerate(q_columns):
            q_columns[i] = last = q if q is not None else last
        return real_pack(rows, like, q_columns)

    strategy = hfspec.JumpForward(hfspec.DraftModel(draft, num_tokens=3))  # passes unplanted: above
    monkeypatch.setattr(jump_forward, "_pack", inheriting_pack)
    p = pvalue(sample_counts(target, spec, strategy), exact)
    assert p < ALPHA


# ----------------------------------------------------------------------------- property: any config
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=15, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    prompt=st.lists(st.integers(3, 52), min_size=1, max_size=8),
    grammar=st.sampled_from(["schema", "regex", "ebnf"]),
    kind=st.sampled_from(["none", "lookup", "lookup/no-jump", "draft", "draft/no-jump", "draft-sampled-q", "jump",
                          "jump+draft", "draft-tree", "draft-tree/no-jump", "lookup-tree", "jump+draft-tree"]),
    num_tokens=st.integers(1, 6),
    max_new=st.integers(1, 20),
)
def test_property_greedy_identical_with_and_without_speculation(pairs, tok, prompt, grammar, kind, num_tokens, max_new):
    target, draft = pairs["llama"]
    spec = grammars(tok)[grammar]
    base, _, off = kind.partition("/")
    strategy = {
        "none": None,
        "lookup": hfspec.PromptLookup(num_tokens=num_tokens, min_ngram=1),
        "draft": hfspec.DraftModel(draft, num_tokens=num_tokens),
        "draft-sampled-q": hfspec.DraftModel(draft, num_tokens=num_tokens, confidence_threshold=0.3),
        "jump": hfspec.JumpForward(max_tokens=num_tokens),
        "jump+draft": hfspec.JumpForward(hfspec.DraftModel(draft, num_tokens=num_tokens), max_tokens=num_tokens),
        "draft-tree": hfspec.DraftModel(draft, num_tokens=num_tokens, tree=TREE),
        "lookup-tree": hfspec.PromptLookup(num_tokens=num_tokens, min_ngram=1, num_branches=2),
        "jump+draft-tree": hfspec.JumpForward(hfspec.DraftModel(draft, num_tokens=num_tokens, tree=TREE),
                                              max_tokens=num_tokens),
    }[base]
    ids = torch.tensor([prompt])
    plain = run(target, ids, None, spec, None, max_new, jump_forward=False)
    fast = run(target, ids, None, spec, strategy, max_new, jump_forward=not off)
    assert fast.tolist() == plain.tolist()


def test_compiled_plan_jumps_forward_within_its_node_budget(pairs, tok):
    """A plan is re-planned with its strategy wrapped (same graphs and caches): same tokens as the
    reference, fewer target forwards than without jump-forward, never more nodes than its budget."""
    target, draft = pairs["llama"]
    spec = hfspec.Regex(FORCED_REGEX, tokenizer=tok)
    ids, mask = PROMPTS["single"]
    plan = hfspec.compile(target, hfspec.DraftModel(draft, num_tokens=3), backend="eager", capacity=128)
    expected = reference(target, ids, mask, spec, tok, 40).tolist()
    forwards = {}
    for jump_forward in (True, False):
        stats = hfspec.SpecStats()
        out = run(target, ids, mask, spec, plan, 40, jump_forward=jump_forward, speculation_stats=stats)
        assert out.tolist() == expected, jump_forward
        forwards[jump_forward] = stats.target_forwards
        assert stats.drafted <= 3 * stats.target_forwards
    assert forwards[True] < forwards[False], forwards


@pytest.mark.parametrize("prompt", ["single", "batch3"])
def test_compiled_plan_with_token_trees_under_grammar(pairs, tok, prompt):
    """A plan's fixed node budget holds a grammar's trunk plus tree; same tokens as the reference."""
    target, draft = pairs["qwen2"]
    spec = hfspec.Regex(FORCED_REGEX, tokenizer=tok)
    ids, mask = PROMPTS[prompt]
    strategy = hfspec.DraftModel(draft, num_tokens=5, tree=TREE)
    plan = hfspec.compile(target, strategy, backend="eager", batch_size=ids.shape[0], capacity=160)
    expected = reference(target, ids, mask, spec, tok, 40).tolist()
    for jump_forward in (True, False):
        stats = hfspec.SpecStats()
        out = run(target, ids, mask, spec, plan, 40, jump_forward=jump_forward, speculation_stats=stats)
        assert out.tolist() == expected, jump_forward
        assert stats.tokens_per_step > 1, stats
