"""DraftModel(draft_vocab=...): a draft LM head restricted to a token subset (FR-Spec).

Exactness of sampling with a pruned draft is tested with the enumerated distribution in
tests/test_sampling_distribution.py (param ``draft_pruned`` and its planted bug).
"""

from __future__ import annotations

import pytest
import torch
from transformers import Gemma2Config, Gemma2ForCausalLM

import hfspec
from hfspec.exceptions import ConfigurationError
from hfspec.proposers.pruned_head import draft_vocab_ids, pruned_head
from tests.conftest import padded_batch

ARCHS = ("llama", "qwen2", "gpt2")
KEEP = 40  # of the tiny models' 64 ids


def _inputs(batch: int) -> dict:
    if batch == 1:
        return {"input_ids": torch.tensor([[5, 6, 7, 8, 5, 6, 7]])}
    ids, mask = padded_batch()
    return {"input_ids": ids, "attention_mask": mask}


def test_head_matches_the_full_head_on_kept_ids_and_is_minus_inf_elsewhere(models):
    target = models["qwen2"][0]
    head = pruned_head(target, [3, 1, 7, 7, 50])
    assert head.ids.tolist() == [1, 3, 7, 50]  # sorted, unique (the tiny model has no EOS id)
    hidden = torch.randn(2, 3, target.config.hidden_size, dtype=target.dtype)
    full = target.get_output_embeddings()(hidden)
    got = head(hidden)
    assert got.shape == full.shape
    torch.testing.assert_close(got[..., head.ids], full[..., head.ids])
    rest = torch.ones(full.shape[-1], dtype=torch.bool)
    rest[head.ids] = False
    assert bool(torch.isneginf(got[..., rest]).all())


def test_first_n_ids_plus_eos(models):
    target = models["llama"][0]
    eos_model = hfspec.testing.tiny_model("llama", eos_token_id=[1, 60])
    assert draft_vocab_ids(target, 5).tolist() == [0, 1, 2, 3, 4]
    assert draft_vocab_ids(eos_model, 5).tolist() == [0, 1, 2, 3, 4, 60]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("plan", [False, True])
def test_greedy_identical_with_a_pruned_draft(models, arch, batch, plan):
    target, draft, _ = models[arch]
    strategy = hfspec.DraftModel(draft, num_tokens=4, draft_vocab=KEEP)
    if plan:
        strategy = hfspec.compile(target, strategy, backend="eager", batch_size=batch, capacity=128)
    stats = hfspec.SpecStats()
    for max_new in (1, 9, 17):
        kwargs = dict(**_inputs(batch), max_new_tokens=max_new, do_sample=False)
        expected = target.generate(**kwargs)
        got = target.generate(**kwargs, custom_generate=hfspec.generate, assistant_strategy=strategy,
                              speculation_stats=stats)
        assert torch.equal(got, expected), (arch, batch, max_new)
    assert stats.accepted > 0  # drafts from the subset were really accepted


def test_drafts_come_from_the_subset_only(models):
    target, draft, _ = models["llama"]
    keep = [5, 6, 7, 8, 9, 10]
    strategy = hfspec.DraftModel(draft, num_tokens=3, draft_vocab=keep, do_sample=True)
    seen: set[int] = set()
    start = strategy.start

    def spying_start(ctx):
        session = start(ctx)
        propose = session.propose

        def spy(view):
            proposal = propose(view)
            seen.update(proposal.ids.flatten().tolist())
            q = proposal.probs
            if proposal.ids.numel() == 0:  # nothing to draft this step
                return proposal
            assert q is not None and torch.allclose(q.sum(-1), torch.ones_like(q.sum(-1)))
            outside = torch.ones(q.shape[-1], dtype=torch.bool)
            outside[keep] = False
            assert float(q[..., outside].abs().max()) == 0.0  # q is the subset's distribution
            return proposal

        session.propose = spy
        return session

    strategy.start = spying_start
    torch.manual_seed(0)
    target.generate(**_inputs(3), max_new_tokens=12, do_sample=True, custom_generate=hfspec.generate,
                    assistant_strategy=strategy)
    assert seen and seen <= set(keep)


def test_inductor_plan_with_a_pruned_draft_is_identical(models):
    target, draft, _ = models["llama"]
    plan = hfspec.compile(target, hfspec.DraftModel(draft, num_tokens=3, draft_vocab=KEEP), backend="inductor",
                          batch_size=1, capacity=128, options={"freezing": True})
    for max_new in (6, 14):
        kwargs = dict(**_inputs(1), max_new_tokens=max_new, do_sample=False)
        assert torch.equal(target.generate(**kwargs, custom_generate=hfspec.generate, assistant_strategy=plan),
                           target.generate(**kwargs))
    assert plan.compiles == 2 and plan.draft.graph_calls > 0
    full = plan.sharing(hfspec.DraftModel(draft, num_tokens=3))  # another head: another draft graph
    assert full.draft is not plan.draft and full.target is plan.target


@pytest.mark.parametrize(
    "bad,match",
    [(0, "between 1"), (10_000, "between 1"), (True, "int or a sequence"), ([], "non-empty"), ([1.5], "ints"),
     ([3, 64], r"\[0, 64\)"), ([-1], r"\[0, 64\)")],
)
def test_bad_draft_vocab_is_refused(models, bad, match):
    with pytest.raises(ConfigurationError, match=match):
        hfspec.DraftModel(models["llama"][1], draft_vocab=bad)


def test_heads_with_softcapping_are_refused():
    config = Gemma2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                          num_attention_heads=2, num_key_value_heads=1, head_dim=16, final_logit_softcapping=30.0)
    model = Gemma2ForCausalLM(config).eval()
    with pytest.raises(ConfigurationError, match="final_logit_softcapping"):
        hfspec.DraftModel(model, draft_vocab=10)
