"""Sampled speculative decoding reproduces the target's exact sequence distribution.

A 6-token-vocabulary model generates 3 tokens, so all 216 continuations can be enumerated
and their exact probabilities computed from full forwards with the same processors
(repetition penalty, temperature 0.7, top-k 4). Samples from hfspec are compared with a
chi-square test (cells with expected count < 5 pooled; a sample of probability 0 gives p = 0). The false-positive rate per test
is ALPHA = 1e-3; seeds are fixed, so the suite is deterministic. Planted bugs (residual
ignored, draft q reported before temperature) run through the same test and must be rejected.
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import LogitsProcessorList
from transformers.generation.logits_process import (
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
)

import hfspec
from hfspec import acceptance, testing_dist
from hfspec.testing import tiny_model

ALPHA = 1e-3
VOCAB, NEW_TOKENS, ROWS, ROUNDS = 6, 3, 6000, 3
PROMPT = [1, 2, 3, 1, 2]
PRUNED = [0, 2, 3, 5]  # draft_vocab of the pruned-head case
SAMPLING = dict(do_sample=True, temperature=0.7, top_k=4, top_p=1.0, repetition_penalty=1.3)


@pytest.fixture(scope="module")
def pair():
    target = tiny_model("llama", vocab_size=VOCAB, logit_scale=3.0, eos_token_id=None, seed=11)
    draft = tiny_model("llama", vocab_size=VOCAB, logit_scale=3.0, eos_token_id=None, seed=12)
    return target, draft


def exact_distribution(model) -> dict[tuple[int, ...], float]:
    """P(continuation) from full (cache-free) forwards, processors applied as HF orders them.

    One batched forward per depth over every prefix of that depth.
    """
    procs = LogitsProcessorList(
        [RepetitionPenaltyLogitsProcessor(1.3), TemperatureLogitsWarper(0.7), TopKLogitsWarper(4)]
    )
    prefix_prob: dict[tuple[int, ...], float] = {(): 1.0}
    for _ in range(NEW_TOKENS):
        prefixes = list(prefix_prob)
        ids = torch.tensor([PROMPT + list(pre) for pre in prefixes])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[:, -1].float()
        dist = torch.softmax(procs(ids, logits), dim=-1).double()
        prefix_prob = {
            pre + (tok,): prefix_prob[pre] * float(dist[i, tok]) for i, pre in enumerate(prefixes) for tok in range(VOCAB)
        }
    return prefix_prob


@pytest.fixture(scope="module")
def exact(pair):
    return exact_distribution(pair[0])


def sample_counts(model, strategy) -> dict[tuple[int, ...], int]:
    counts: dict[tuple[int, ...], int] = {}
    ids = torch.tensor([PROMPT] * ROWS)
    for round_ in range(ROUNDS):
        torch.manual_seed(1000 + round_)
        kwargs = dict(input_ids=ids, max_new_tokens=NEW_TOKENS, **SAMPLING)
        if strategy is None:
            out = model.generate(**kwargs)
        else:
            out = model.generate(custom_generate=hfspec.generate, assistant_strategy=strategy, **kwargs)
        for row in out[:, len(PROMPT) :].tolist():
            counts[tuple(row)] = counts.get(tuple(row), 0) + 1
    return counts


def chi_square_pvalue(counts: dict, exact: dict) -> float:
    """Chi-square p-value of sampled continuations against the enumerated distribution."""
    assert set(counts) <= set(exact)
    cells = list(exact)
    return testing_dist.chi_square_pvalue([counts.get(c, 0) for c in cells], [exact[c] for c in cells])


def test_exact_distribution_sums_to_one(exact):
    assert abs(sum(exact.values()) - 1.0) < 1e-6
    assert sum(1 for v in exact.values() if v == 0) > 0  # top-k leaves zero-probability continuations


def test_plain_hf_sampling_matches_exact(pair, exact):
    """Sanity check of the test itself: HF's own sampler passes it."""
    assert chi_square_pvalue(sample_counts(pair[0], None), exact) > ALPHA


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda t, d: hfspec.DraftModel(d, num_tokens=3), id="draft_sampled_q"),
        pytest.param(lambda t, d: hfspec.DraftModel(d, num_tokens=2, do_sample=False), id="draft_greedy_onehot"),
        pytest.param(lambda t, d: hfspec.PromptLookup(num_tokens=3, max_ngram=2), id="prompt_lookup"),
        # a pruned draft head: q is 0 outside the subset, so the residual carries those tokens' mass
        pytest.param(lambda t, d: hfspec.DraftModel(d, num_tokens=3, draft_vocab=PRUNED), id="draft_pruned"),
        # a bf16 draft of a float32 target: q is float32 of the bf16 logits, exactly what was sampled
        pytest.param(lambda t, d: hfspec.DraftModel(copy.deepcopy(d).to(torch.bfloat16), num_tokens=3), id="draft_bf16"),
        # steps switch between a deterministic lookup and a sampled draft
        pytest.param(
            lambda t, d: hfspec.LookupOrDraft(hfspec.PromptLookup(num_tokens=3, max_ngram=2), hfspec.DraftModel(d, num_tokens=3),
                                              min_tokens=1, min_agreement=0.0),
            id="lookup_or_draft",
        ),
    ],
)
def test_speculative_sampling_matches_exact(pair, exact, make):
    target, draft = pair
    stats = hfspec.SpecStats()
    strategy = make(target, draft)
    counts = sample_counts(target, strategy)
    assert chi_square_pvalue(counts, exact) > ALPHA
    # and speculation really happened (otherwise this would only re-test plain sampling)
    probe = target.generate(
        input_ids=torch.tensor([PROMPT] * 64), max_new_tokens=NEW_TOKENS, custom_generate=hfspec.generate,
        assistant_strategy=strategy, speculation_stats=stats, **SAMPLING,
    )
    assert probe.shape == (64, len(PROMPT) + NEW_TOKENS)
    assert stats.accepted > 0 and stats.accepted < stats.drafted


# ---------------------------------------------------------------- planted bugs: must be rejected
_real_speculative_accept = acceptance.speculative_accept


def _accept_resample_from_p(draft_ids, num_drafts, draft_probs, target_probs, *, generator=None):
    """BUG: on rejection sample from p instead of norm(max(p - q, 0))."""
    n, _ = _real_speculative_accept(draft_ids, num_drafts, draft_probs, target_probs, generator=generator)
    p_next = target_probs[torch.arange(n.shape[0]), n]
    return n, torch.multinomial(p_next, 1).squeeze(1)


class _QBeforeTemperature:
    """BUG: drafts sampled from the processed q, but acceptance told the q before temperature."""

    def __init__(self, inner: hfspec.DraftModel):
        self.inner = inner

    def validate(self, target, generation_config):
        self.inner.validate(target, generation_config)

    def start(self, ctx):
        session = self.inner.start(ctx)

        class Session:
            def propose(self, view):
                proposal = session.propose(view)
                if proposal.probs is not None:  # q = softmax(l / 0.7)  =>  softmax(l) = softmax(0.7 log q)
                    proposal.probs = torch.softmax(0.7 * proposal.probs.log(), dim=-1).nan_to_num(0.0)
                return proposal

            def on_commit(self, kept_slots):
                session.on_commit(kept_slots)

        return Session()


def test_planted_bug_residual_ignored_is_rejected(pair, exact, monkeypatch):
    monkeypatch.setattr(acceptance, "speculative_accept", _accept_resample_from_p)
    counts = sample_counts(pair[0], hfspec.DraftModel(pair[1], num_tokens=3))
    assert chi_square_pvalue(counts, exact) < ALPHA


def test_planted_bug_residual_ignored_with_a_pruned_draft_is_rejected(pair, exact, monkeypatch):
    monkeypatch.setattr(acceptance, "speculative_accept", _accept_resample_from_p)
    counts = sample_counts(pair[0], hfspec.DraftModel(pair[1], num_tokens=3, draft_vocab=PRUNED))
    assert chi_square_pvalue(counts, exact) < ALPHA


def test_planted_bug_q_before_processors_is_rejected(pair, exact):
    counts = sample_counts(pair[0], _QBeforeTemperature(hfspec.DraftModel(pair[1], num_tokens=3)))
    assert chi_square_pvalue(counts, exact) < ALPHA
