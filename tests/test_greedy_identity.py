"""Greedy speculative output must be token-identical to plain ``model.generate``.

Covers every tiny architecture, both proposers, batch 1 and a left-padded batch of 3 whose
rows finish at different times, EOS inside a draft, and max_new_tokens reached mid-draft.
Models are float64 so verify-vs-sequential numerics cannot flip an argmax.
"""

from __future__ import annotations

import pytest
import torch

import hfspec
from tests.conftest import padded_batch

ARCHS = ("llama", "qwen2", "gpt2")


def strategies(target, close_draft):
    return {
        "draft_close": hfspec.DraftModel(close_draft, num_tokens=4),
        "draft_perfect": hfspec.DraftModel(target, num_tokens=6),
        "draft_threshold": hfspec.DraftModel(close_draft, num_tokens=5, confidence_threshold=0.5),
        "lookup": hfspec.PromptLookup(num_tokens=4),
        "lookup_long": hfspec.PromptLookup(num_tokens=10, max_ngram=2),
    }


def spec(model, strategy, **kwargs):
    return model.generate(custom_generate=hfspec.generate, assistant_strategy=strategy, **kwargs)


def first_generated(model, input_ids, attention_mask, position: int, strict: bool = False) -> int:
    """A token plain greedy decoding first emits at ``position`` or later in row 0 (used as an EOS id).

    Skips tokens that already occurred earlier, so the EOS really lands at that position.
    """
    ref = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=position + 12)
    generated = ref[0, input_ids.shape[1] :].tolist()
    for pos in range(position, len(generated)):
        if generated[pos] not in generated[:pos]:
            return generated[pos]
    if strict:
        raise AssertionError("tiny model output too repetitive for this test")
    return generated[position]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("with_eos", [False, True])
def test_greedy_identical(models, arch, batch, with_eos):
    target, close, _ = models[arch]
    ids, mask = padded_batch()
    ids, mask = ids[-batch:], mask[-batch:]
    kwargs = dict(input_ids=ids, attention_mask=mask, max_new_tokens=24, do_sample=False)
    if with_eos:  # rows then stop at different steps, often inside an accepted draft
        kwargs["eos_token_id"] = first_generated(target, ids, mask, position=5)
    expected = target.generate(**kwargs)
    for name, strategy in strategies(target, close).items():
        got = spec(target, strategy, **kwargs)
        assert torch.equal(got, expected), f"{arch} batch={batch} eos={with_eos} strategy={name}"


@pytest.mark.parametrize("arch", ARCHS)
def test_eos_inside_draft_stops_there(models, arch):
    """A perfect draft proposes 8 tokens; EOS is the 3rd generated token, i.e. inside the first draft."""
    target, _, _ = models[arch]
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    eos = first_generated(target, ids, None, position=2, strict=True)
    expected = target.generate(input_ids=ids, max_new_tokens=20, eos_token_id=eos)
    stats = hfspec.SpecStats()
    got = spec(target, hfspec.DraftModel(target, num_tokens=8), input_ids=ids, max_new_tokens=20,
               eos_token_id=eos, speculation_stats=stats)
    assert torch.equal(got, expected)
    stop = got.shape[1] - ids.shape[1]
    assert 3 <= stop <= 9 and int(got[0, -1]) == eos  # EOS was proposed inside the first 8-token draft
    assert stats.target_forwards == 1  # one forward: prompt catch-up + the 8 drafts holding the EOS


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("max_new", [1, 2, 5, 7])
def test_max_new_tokens_mid_draft(models, arch, max_new):
    target, _, _ = models[arch]
    ids, mask = padded_batch()
    expected = target.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new)
    for strategy in (hfspec.DraftModel(target, num_tokens=8), hfspec.PromptLookup(num_tokens=8)):
        got = spec(target, strategy, input_ids=ids, attention_mask=mask, max_new_tokens=max_new)
        assert torch.equal(got, expected)
        assert got.shape[1] == ids.shape[1] + max_new


def test_min_new_tokens_and_repetition_penalty_and_multiple_eos(models):
    """Processors that read input_ids must see each speculative position's exact prefix."""
    target, close, _ = models["qwen2"]
    ids, mask = padded_batch()
    eos_a = first_generated(target, ids, mask, position=1)
    eos_b = first_generated(target, ids, mask, position=4)
    kwargs = dict(input_ids=ids, attention_mask=mask, max_new_tokens=20, min_new_tokens=6,
                  repetition_penalty=1.5, no_repeat_ngram_size=3, eos_token_id=[eos_a, eos_b])
    expected = target.generate(**kwargs)
    for strategy in strategies(target, close).values():
        assert torch.equal(spec(target, strategy, **kwargs), expected)


def test_float32_models_identical(models):
    """The default dtype of real models; tiny logits scale keeps near-ties rare but not impossible."""
    from hfspec.testing import perturbed_copy, tiny_model

    target = tiny_model("llama", dtype=torch.float32, logit_scale=8.0, eos_token_id=None, seed=3)
    draft = perturbed_copy(target, 0.01)
    ids, mask = padded_batch()
    expected = target.generate(input_ids=ids, attention_mask=mask, max_new_tokens=20)
    got = spec(target, hfspec.DraftModel(draft, num_tokens=4), input_ids=ids, attention_mask=mask, max_new_tokens=20)
    assert torch.equal(got, expected)


def test_draft_with_wider_lm_head(models):
    """Qwen2.5 pairs differ in lm-head padding (151,936 vs 152,064): widths are aligned, output unchanged."""
    from hfspec.testing import tiny_model

    target = tiny_model("qwen2", vocab_size=256, logit_scale=8.0, eos_token_id=None)
    wide = tiny_model("qwen2", vocab_size=256, logit_scale=8.0, eos_token_id=None)
    with torch.no_grad():  # same weights, 2 extra padded rows
        head = wide.get_output_embeddings()
        w = torch.cat([head.weight, head.weight[:2]], 0)
        new_head = torch.nn.Linear(w.shape[1], w.shape[0], bias=False, dtype=w.dtype)
        new_head.weight.copy_(w)
        wide.lm_head = new_head
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    expected = target.generate(input_ids=ids, max_new_tokens=15)
    stats = hfspec.SpecStats()
    got = spec(target, hfspec.DraftModel(wide, num_tokens=4), input_ids=ids, max_new_tokens=15,
               speculation_stats=stats)
    assert torch.equal(got, expected)
    assert stats.acceptance_rate == 1.0
