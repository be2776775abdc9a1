"""LookupOrDraft: the prompt lookup's continuation when it has been predicting well, else the draft.

Sampling exactness: tests/test_sampling_distribution.py (param ``lookup_or_draft``).
"""

from __future__ import annotations

import math

import pytest
import torch

import hfspec
from hfspec.exceptions import ConfigurationError
from hfspec.proposers.lookup_or_draft import agreement
from tests.conftest import padded_batch

# a prompt that repeats itself: the lookup finds continuations from the first step on
REPEATING = [5, 6, 7, 8, 9, 10, 11, 12, 5, 6, 7, 8, 9, 10, 11, 12, 5, 6, 7]


def _strategy(draft, **kwargs) -> hfspec.LookupOrDraft:
    return hfspec.LookupOrDraft(hfspec.PromptLookup(num_tokens=4), hfspec.DraftModel(draft, num_tokens=3), **kwargs)


def _spy(strategy: hfspec.LookupOrDraft) -> list:
    """Keep every session the strategy starts (their ``steps`` say who proposed)."""
    sessions: list = []
    start = strategy.start

    def spying(ctx):
        sessions.append(start(ctx))
        return sessions[-1]

    strategy.start = spying
    return sessions


def test_agreement_counts_leading_matches_over_what_can_be_judged():
    proposed = torch.tensor([[1, 2, 3, 4], [1, 2, 0, 0], [7, 7, 7, 7]])
    lengths = torch.tensor([4, 2, 0])
    committed = torch.tensor([[1, 2, 9, 4, 5], [1, 2, 3, 0, 0], [7, 7, 0, 0, 0]])
    kept = torch.tensor([5, 3, 2])
    # row 0: 2 leading of 4; row 1: 2 of 2; row 2 proposed nothing (skipped)
    assert agreement(proposed, lengths, committed, kept) == pytest.approx((2 / 4 + 2 / 2) / 2)
    # a row that kept fewer tokens than it was proposed is judged on what it kept
    assert agreement(torch.tensor([[1, 2, 3]]), torch.tensor([3]), torch.tensor([[1, 5]]), torch.tensor([1])) == 1.0
    assert math.isnan(agreement(proposed, torch.zeros(3, dtype=torch.long), committed, kept))


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("plan", [False, True])
def test_greedy_identical_and_both_proposers_serve(models, arch, batch, plan):
    target, draft, _ = models[arch]
    strategy = _strategy(draft, min_agreement=0.5)
    sessions = _spy(strategy)
    run = hfspec.compile(target, strategy, backend="eager", batch_size=batch, capacity=256) if plan else strategy
    if batch == 1:
        inputs = {"input_ids": torch.tensor([REPEATING])}
    else:
        ids, mask = padded_batch()
        inputs = {"input_ids": ids, "attention_mask": mask}
    for max_new in (1, 12, 30):
        kwargs = dict(**inputs, max_new_tokens=max_new, do_sample=False)
        got = target.generate(**kwargs, custom_generate=hfspec.generate, assistant_strategy=run)
        assert torch.equal(got, target.generate(**kwargs)), (arch, batch, max_new)
    steps = {k: sum(s.steps[k] for s in sessions) for k in ("lookup", "draft")}
    assert steps["draft"] > 0
    if batch == 1:
        assert steps["lookup"] > 0  # the repeating prompt gives the lookup its turns


def test_lookup_never_serves_when_agreement_cannot_be_reached(models):
    target, draft, _ = models["llama"]
    strategy = _strategy(draft, min_agreement=1.0, min_tokens=4)
    sessions = _spy(strategy)
    kwargs = dict(input_ids=torch.tensor([[3, 9, 4, 1, 8]]), max_new_tokens=20, do_sample=False)
    got = target.generate(**kwargs, custom_generate=hfspec.generate, assistant_strategy=strategy)
    assert torch.equal(got, target.generate(**kwargs))
    assert sessions[0].steps["draft"] > 0


def test_inductor_plan_builds_the_inner_draft_graph(models):
    target, draft, _ = models["qwen2"]
    plan = hfspec.compile(target, _strategy(draft, min_agreement=0.5), backend="inductor", batch_size=1,
                          capacity=128, options={"freezing": True})
    assert plan.draft is not None and plan.node_budget == 4
    kwargs = dict(input_ids=torch.tensor([REPEATING]), max_new_tokens=24, do_sample=False)
    assert torch.equal(target.generate(**kwargs, custom_generate=hfspec.generate, assistant_strategy=plan),
                       target.generate(**kwargs))
    assert plan.draft.graph_calls > 0 and plan.compiles == 2


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda d: hfspec.LookupOrDraft(hfspec.DraftModel(d), hfspec.DraftModel(d)), "PromptLookup"),
        (lambda d: hfspec.LookupOrDraft(hfspec.PromptLookup(num_branches=2), hfspec.DraftModel(d)), "num_branches=1"),
        (lambda d: hfspec.LookupOrDraft(hfspec.PromptLookup(), hfspec.PromptLookup()), "DraftModel"),
        (lambda d: hfspec.LookupOrDraft(hfspec.PromptLookup(), hfspec.DraftModel(d, tree=hfspec.TreeSpec(2, 2))),
         "without tree"),
        (lambda d: _strategy(d, min_tokens=0), "min_tokens"),
        (lambda d: _strategy(d, min_agreement=1.5), "min_agreement"),
    ],
)
def test_bad_configuration_is_refused(models, make, match):
    with pytest.raises(ConfigurationError, match=match):
        make(models["llama"][1])


def test_sampled_calls_switch_between_the_proposers():
    """The sampling-law case (tests/test_sampling_distribution.py, ``lookup_or_draft``) really mixes them."""
    from tests.test_sampling_distribution import NEW_TOKENS, PROMPT, SAMPLING

    target = hfspec.testing.tiny_model("llama", vocab_size=6, logit_scale=3.0, eos_token_id=None, seed=11)
    draft = hfspec.testing.tiny_model("llama", vocab_size=6, logit_scale=3.0, eos_token_id=None, seed=12)
    strategy = hfspec.LookupOrDraft(hfspec.PromptLookup(num_tokens=3, max_ngram=2), hfspec.DraftModel(draft, num_tokens=3),
                                    min_tokens=1, min_agreement=0.0)
    sessions = _spy(strategy)
    torch.manual_seed(0)
    target.generate(input_ids=torch.tensor([PROMPT] * 600), max_new_tokens=NEW_TOKENS, custom_generate=hfspec.generate,
                    assistant_strategy=strategy, **SAMPLING)
    assert sessions[0].steps["lookup"] > 0 and sessions[0].steps["draft"] > 0
