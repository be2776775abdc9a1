"""Grammar-aligned sampling on a toy LM where every law is enumerable.

The toy: a tiny random llama over the 64-token JSON vocabulary, the regex ``x[ab]{1,2}zabz`` (14
token sequences, several spellings of the same text), temperature 0.8. Under the unconstrained
model the language has mass Z ≈ 3e-11, and masking distorts it badly: KL(Q || masked) ≈ 1.2.
Every law below is computed exactly by walking every grammatical prefix with the model:
  masked   ∏ P(a|x)·1[a allowed] / A(x)           what grammar= samples
  Q        P(w)·1[w ∈ L] / Z                      the target of GrammarAligned
  Q̂_trie   ∏ P(a|x)·1[a allowed]·ĉ(xa) / Z(x)     ASAp's law given a learned trie
Chi-square tests reject at ALPHA (stated false-positive rate per test, fixed seeds), and each
claim has a planted-bug twin that the same test must reject.
"""

from __future__ import annotations

import math

import pytest
import torch
import xgrammar as xgr

import hfspec
from hfspec import testing_dist
from hfspec.grammar.aligned import rounds as aligned_rounds
from hfspec.grammar.aligned.target import AlignedTarget
from hfspec.grammar.compile import compile_spec
from hfspec.testing import perturbed_copy, tiny_json_tokenizer, tiny_model

ALPHA = 1e-3
VOCAB, EOS, TEMPERATURE, MAX_NEW = 64, 1, 0.8, 10
REGEX = r"x[ab]{1,2}zabz"
PROMPT = [3, 27, 21, 22, 28, 29, 27]
SAMPLING = dict(do_sample=True, temperature=TEMPERATURE, top_k=0, top_p=1.0)


@pytest.fixture(scope="module")
def toy():
    tok = tiny_json_tokenizer()
    target = tiny_model("llama", vocab_size=VOCAB, logit_scale=2.0, seed=21)
    draft = perturbed_copy(target, 0.3, seed=4)
    spec = hfspec.Regex(REGEX, tokenizer=tok)
    return tok, target, draft, spec, compile_spec(spec, tok, VOCAB)


def laws(model, compiled, trie=None, max_len: int = MAX_NEW):
    """(masked, Q, Q̂_trie) over complete token sequences (ending in EOS) of at most ``max_len`` tokens."""
    masked, q, qhat = {}, {}, {}
    frontier = {(): (1.0, 1.0, 1.0, trie.root if trie is not None else None)}
    while frontier:
        nxt = {}
        for prefix, (pm, pq, ph, node) in frontier.items():
            matcher = xgr.GrammarMatcher(compiled, override_stop_tokens=[EOS])
            for token in prefix:
                assert matcher.accept_token(token)
            bitmask = xgr.allocate_token_bitmask(1, VOCAB)
            matcher.fill_next_token_bitmask(bitmask, 0)
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([PROMPT + list(prefix)])).logits[:, -1].double()
            p = torch.softmax(logits / TEMPERATURE, -1)[0]
            masked_logits = logits.float().clone()
            xgr.apply_token_bitmask_inplace(masked_logits, bitmask)
            m = torch.softmax(masked_logits.double() / TEMPERATURE, -1)[0]
            h = m.clone()
            if node is not None and node.allowed is not None:
                for token, child in node.children.items():
                    h[token] *= child.value
                h /= h.sum()
            for token in torch.nonzero(m > 0).flatten().tolist():
                cell = prefix + (token,)
                child = node.children.get(token) if node is not None else None
                value = (pm * float(m[token]), pq * float(p[token]), ph * float(h[token]), child)
                if token == EOS:
                    masked[cell], q[cell], qhat[cell] = value[:3]
                elif len(cell) < max_len:
                    nxt[cell] = value
        frontier = nxt
    total_m, total_q, total_h = (sum(d.values()) for d in (masked, q, qhat))
    return ({c: v / total_m for c, v in masked.items()}, {c: v / total_q for c, v in q.items()},
            {c: v / total_h for c, v in qhat.items()})


def kl(p: dict, q: dict) -> float:
    return sum(pv * math.log(pv / q[c]) if q.get(c, 0) > 0 else math.inf for c, pv in p.items() if pv > 0)


def draw(model, grammar, rows: int, *, strategy=None, seed: int = 0, max_new: int = MAX_NEW, **kwargs):
    torch.manual_seed(seed)
    out = model.generate(
        input_ids=torch.tensor([PROMPT] * rows), custom_generate=hfspec.generate, grammar=grammar,
        assistant_strategy=strategy, max_new_tokens=max_new, **SAMPLING, **kwargs,
    )
    return testing_dist.sequence_counts(out[:, len(PROMPT):].tolist(), EOS)


pvalue = testing_dist.cells_pvalue


@pytest.fixture(scope="module")
def exact_laws(toy):
    _, target, _, _, compiled = toy
    masked, q, _ = laws(target, compiled)
    assert len(q) == 14 and abs(sum(q.values()) - 1) < 1e-9
    return masked, q


# ---------------------------------------------------------------------------- the problem is real
def test_masked_decoding_samples_a_different_law(toy, exact_laws):
    _, target, _, spec, _ = toy
    masked, q = exact_laws
    assert kl(q, masked) > 0.5, f"KL(Q || masked) = {kl(q, masked):.3f}: the toy does not show the distortion"
    counts = draw(target, spec, 500, seed=1)
    assert pvalue(counts, masked) >= ALPHA  # grammar= samples the masked law ...
    assert pvalue(counts, q) < ALPHA  # ... which is not Q


# ---------------------------------------------------------------------------- exact method
STRATEGIES = ["none", "none/no-jump", "draft-sampled", "draft-greedy", "lookup", "draft-tree", "lookup-tree"]


def strategy_for(name, draft):
    return {
        "none": None,
        "draft-sampled": hfspec.DraftModel(draft, num_tokens=3),
        "draft-greedy": hfspec.DraftModel(draft, num_tokens=3, do_sample=False),
        "lookup": hfspec.PromptLookup(num_tokens=3, min_ngram=1),
        "draft-tree": hfspec.DraftModel(draft, num_tokens=4, tree=hfspec.TreeSpec(top_k=2, depth=3)),
        "lookup-tree": hfspec.PromptLookup(num_tokens=4, min_ngram=1, num_branches=3),
    }[name.partition("/")[0]]


@pytest.mark.parametrize("name", STRATEGIES)
def test_exact_samples_follow_q(toy, exact_laws, name):
    """Every accepted sample is from Q, with and without speculation (draft chains, lookup, jump-forward)."""
    _, target, draft, spec, _ = toy
    aligned = hfspec.GrammarAligned(spec, method="exact")
    counts = draw(target, aligned, 600, strategy=strategy_for(name, draft), seed=2,
                  jump_forward=not name.endswith("/no-jump"))
    assert pvalue(counts, exact_laws[1]) >= ALPHA, sorted(counts.items())
    stats = aligned.last_call
    assert stats.samples == 600 and stats.attempts >= 600 and stats.rounds >= 1
    assert stats.forwards_per_sample > 0 and 0 < stats.acceptance_rate <= 1


def test_exact_respects_the_length_limit(toy):
    """With max_new_tokens=6 the target is Q restricted to sequences of at most 6 tokens (EOS included)."""
    _, target, _, spec, compiled = toy
    _, q_short, _ = laws(target, compiled, max_len=6)
    assert 0 < len(q_short) < 14
    counts = draw(target, hfspec.GrammarAligned(spec, method="exact"), 500, seed=3, max_new=6)
    assert pvalue(counts, q_short) >= ALPHA, sorted(counts.items())


def test_exact_stays_exact_under_a_tiny_memory_bound(toy, exact_laws):
    _, target, _, spec, _ = toy
    aligned = hfspec.GrammarAligned(spec, method="exact", max_nodes=50, max_rounds=400)
    counts = draw(target, aligned, 300, seed=4)
    assert aligned.num_nodes <= 50
    assert pvalue(counts, exact_laws[1]) >= ALPHA


class DeadMassNotSubtracted(AlignedTarget):
    """Planted bug: the proposal forgets the dead mass the trie has proven (samples the masked P at
    known prefixes) while the acceptance weight assumes it was subtracted."""

    def probs(self, scores, view):
        super().probs(scores, view)
        return torch.softmax(scores, dim=-1)


class NoAcceptanceDraw(AlignedTarget):
    """Planted bug: the exact method's acceptance draw is skipped (every finished sample is kept)."""

    def __init__(self, *args, **kwargs):
        kwargs["log_u"] = None
        super().__init__(*args, **kwargs)


class MaskedVerification(AlignedTarget):
    """Planted bug: drafts are verified against the masked P, not the aligned target."""

    def probs(self, scores, view):
        out = super().probs(scores, view)
        return torch.softmax(scores, dim=-1) if int(view.batch.num_nodes.max()) > 0 else out


@pytest.mark.parametrize("bug", [DeadMassNotSubtracted, NoAcceptanceDraw])
def test_planted_exact_bugs_are_rejected(toy, exact_laws, monkeypatch, bug):
    _, target, _, spec, _ = toy
    monkeypatch.setattr(aligned_rounds, "AlignedTarget", bug)
    aligned = hfspec.GrammarAligned(spec, method="exact", max_rounds=400)
    counts = draw(target, aligned, 600, seed=2)
    assert pvalue(counts, exact_laws[1]) < ALPHA


def test_planted_masked_verification_is_rejected(toy, exact_laws, monkeypatch):
    _, target, draft, spec, _ = toy
    monkeypatch.setattr(aligned_rounds, "AlignedTarget", MaskedVerification)
    aligned = hfspec.GrammarAligned(spec, method="exact", max_rounds=400)
    # warm the trie so that Q̂ differs from the masked P where drafts are verified
    draw(target, aligned, 200, seed=5, jump_forward=False)
    counts = draw(target, aligned, 600, strategy=hfspec.DraftModel(draft, num_tokens=3), seed=2, jump_forward=False)
    assert pvalue(counts, exact_laws[1]) < ALPHA


# ---------------------------------------------------------------------------- ASAp
def asap_kl_curve(target, spec, compiled, q, batches: int = 6, rows: int = 50) -> list[float]:
    aligned = hfspec.GrammarAligned(spec, method="asap")
    curve = []
    for i in range(batches):
        draw(target, aligned, rows, seed=10 + i)
        (trie,) = aligned._tries.values()
        curve.append(kl(q, laws(target, compiled, trie)[2]))
    return curve


def test_asap_law_converges_towards_q(toy, exact_laws):
    """KL(Q || Q̂_trie) after 50, 100, ... ASAp samples: shrinks and ends far below the masked KL."""
    _, target, _, spec, compiled = toy
    masked, q = exact_laws
    curve = asap_kl_curve(target, spec, compiled, q)
    assert curve[-1] < curve[0] and curve[-1] < 0.1 * kl(q, masked), (curve, kl(q, masked))


class UnexploredCountZero(AlignedTarget):
    """Planted bug: unexplored allowed children get ĉ = 0 instead of 1 (only seen paths are ever followed)."""

    def probs(self, scores, view):
        out = super().probs(scores, view)
        for row, columns in enumerate(self._step[4]):
            for column, node in enumerate(columns):
                if node is not None and node.allowed is not None and node.children:
                    keep = torch.zeros(out.shape[-1], dtype=torch.bool)
                    keep[list(node.children)] = True
                    out[row, column] = out[row, column] * keep
                    out[row, column] /= out[row, column].sum()
        return out


def test_planted_unexplored_zero_does_not_converge(toy, exact_laws, monkeypatch):
    _, target, _, spec, compiled = toy
    masked, q = exact_laws
    monkeypatch.setattr(aligned_rounds, "AlignedTarget", UnexploredCountZero)
    curve = asap_kl_curve(target, spec, compiled, q)
    assert not curve[-1] < 0.1 * kl(q, masked), curve


@pytest.mark.parametrize("name", ["draft-sampled", "lookup", "draft-tree"])
def test_aligned_speculation_matches_the_non_speculative_law(toy, name):
    """With a learned, frozen trie (learn=False) ASAp samples Q̂_trie, and speculation samples it too."""
    _, target, draft, spec, compiled = toy
    aligned = hfspec.GrammarAligned(spec, method="asap")
    draw(target, aligned, 60, seed=20)
    frozen = hfspec.GrammarAligned(spec, method="asap", learn=False)
    frozen._tries, frozen._budget, frozen._bound = aligned._tries, aligned._budget, aligned._bound
    (trie,) = aligned._tries.values()
    masked, _, qhat = laws(target, compiled, trie)
    assert testing_dist.total_variation([qhat[c] for c in masked], list(masked.values())) > 0.1
    plain = draw(target, frozen, 600, seed=21)
    spec_counts = draw(target, frozen, 600, strategy=strategy_for(name, draft), seed=22)
    assert pvalue(plain, qhat) >= ALPHA
    assert pvalue(spec_counts, qhat) >= ALPHA, sorted(spec_counts.items())
    assert frozen.num_nodes == aligned.num_nodes  # learn=False added nothing


@pytest.mark.parametrize("name", ["draft-sampled", "draft-tree"])
def test_planted_masked_verification_breaks_aligned_speculation(toy, monkeypatch, name):
    _, target, draft, spec, compiled = toy
    aligned = hfspec.GrammarAligned(spec, method="asap")
    draw(target, aligned, 60, seed=20)
    (trie,) = aligned._tries.values()
    _, _, qhat = laws(target, compiled, trie)
    aligned.learn = False
    monkeypatch.setattr(aligned_rounds, "AlignedTarget", MaskedVerification)
    counts = draw(target, aligned, 600, strategy=strategy_for(name, draft), seed=22, jump_forward=False)
    assert pvalue(counts, qhat) < ALPHA


class MaskedDrafts(AlignedTarget):
    """Drafts drawn from the draft's masked law, without the trie's ĉ (exact too, just accepted less)."""

    draft_reweight = None


@pytest.mark.parametrize("target_class", [AlignedTarget, MaskedDrafts])
def test_drafts_reweighted_by_the_trie_are_accepted_more_often(toy, exact_laws, monkeypatch, target_class):
    """The draft's q moves towards Q̂ (its masked scores plus log ĉ of known children): the law stays Q,
    and a close draft is accepted more often than with its masked q (0.90 vs 0.74 with these seeds)."""
    _, target, _, spec, _ = toy
    draft = perturbed_copy(target, 0.05, seed=4)
    monkeypatch.setattr(aligned_rounds, "AlignedTarget", target_class)
    aligned = hfspec.GrammarAligned(spec, method="exact")
    stats = hfspec.SpecStats()
    counts: dict = {}
    for seed in range(3):
        for cell, n in draw(target, aligned, 200, strategy=hfspec.DraftModel(draft, num_tokens=3), seed=seed,
                            jump_forward=False, speculation_stats=stats).items():
            counts[cell] = counts.get(cell, 0) + n
    assert pvalue(counts, exact_laws[1]) >= ALPHA
    if target_class is AlignedTarget:
        assert stats.acceptance_rate > 0.85, stats.acceptance_rate
    else:
        assert stats.acceptance_rate < 0.8, stats.acceptance_rate
