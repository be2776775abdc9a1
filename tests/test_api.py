"""The public surface: custom_generate, enable()/disable(), pipelines, streamers, stop strings,
return_dict_in_generate, and clear errors raised before any model work."""

from __future__ import annotations

import pytest
import torch
from transformers import TextIteratorStreamer, pipeline
from transformers.generation.streamers import BaseStreamer

import hfspec
from hfspec.testing import perturbed_copy, tiny_model, tiny_tokenizer
from tests.conftest import padded_batch


@pytest.fixture(scope="module")
def target():
    return tiny_model("qwen2", logit_scale=8.0, eos_token_id=1)


@pytest.fixture(scope="module")
def draft(target):
    return perturbed_copy(target, 0.01)


class ForwardCounter:
    """Counts forward calls, to prove validation errors happen before any model work."""

    def __init__(self, *models):
        self.calls = 0
        self.handles = [m.register_forward_hook(self._hook) for m in models]

    def _hook(self, *_):
        self.calls += 1

    def close(self):
        for h in self.handles:
            h.remove()


def spec(model, **kwargs):
    return model.generate(custom_generate=hfspec.generate, **kwargs)


# ------------------------------------------------------------------------------ parity
def test_without_strategy_custom_generate_is_plain_hf(target):
    ids, mask = padded_batch()
    for kwargs in (dict(do_sample=False), dict(do_sample=True, temperature=0.8, top_k=5), dict(num_beams=2)):
        torch.manual_seed(0)
        expected = target.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8, **kwargs)
        torch.manual_seed(0)
        got = spec(target, input_ids=ids, attention_mask=mask, max_new_tokens=8, **kwargs)
        assert torch.equal(got, expected), kwargs


def test_enable_then_plain_generate_accepts_strategy(target, draft):
    ids, mask = padded_batch()
    expected = target.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12)
    hfspec.enable()
    hfspec.enable()  # idempotent
    assert hfspec.is_enabled()
    assert torch.equal(target.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12), expected)
    stats = hfspec.SpecStats()
    got = target.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12,
                          assistant_strategy=hfspec.DraftModel(draft, num_tokens=3), speculation_stats=stats)
    assert torch.equal(got, expected) and stats.target_forwards > 0
    hfspec.disable()
    assert not hfspec.is_enabled()
    with pytest.raises(ValueError):  # HF's own "model_kwargs are not used" once disabled
        target.generate(input_ids=ids, max_new_tokens=2, assistant_strategy=hfspec.PromptLookup())


def test_strategy_reused_across_calls_and_models(draft):
    """Per-call state lives in the engine session, so one strategy object serves many calls and models."""
    strategy = hfspec.DraftModel(draft, num_tokens=3)
    lookup = hfspec.PromptLookup(num_tokens=4)
    ids = torch.tensor([[5, 6, 7, 5, 6]])
    for seed in (0, 1):
        model = tiny_model("qwen2", logit_scale=8.0, eos_token_id=None, seed=seed)
        expected = model.generate(input_ids=ids, max_new_tokens=10)
        for s in (strategy, lookup, strategy, lookup):
            assert torch.equal(spec(model, input_ids=ids, max_new_tokens=10, assistant_strategy=s), expected)


def test_pipeline_with_strategy(target, draft):
    tok = tiny_tokenizer()
    hfspec.enable()
    pipe = pipeline("text-generation", model=target, tokenizer=tok)
    expected = pipe("t5 t6 t7 t5 t6", max_new_tokens=8, do_sample=False)
    for strategy in (hfspec.DraftModel(draft, num_tokens=3), hfspec.PromptLookup()):
        got = pipe("t5 t6 t7 t5 t6", max_new_tokens=8, do_sample=False, assistant_strategy=strategy)
        assert got == expected
    batch = pipe(["t5 t6 t7", "t9 t8 t9 t8 t9"], max_new_tokens=6, do_sample=False, batch_size=2,
                 assistant_strategy=hfspec.PromptLookup())
    assert batch == pipe(["t5 t6 t7", "t9 t8 t9 t8 t9"], max_new_tokens=6, do_sample=False, batch_size=2)


class RecordingStreamer(BaseStreamer):
    def __init__(self):
        self.puts: list[list[int]] = []
        self.ended = False

    def put(self, value):
        self.puts.append(value.reshape(-1).tolist())

    def end(self):
        self.ended = True


@pytest.mark.parametrize("enabled", [False, True])
def test_streamer_gets_prompt_then_only_committed_tokens(target, draft, enabled):
    ids = torch.tensor([[5, 6, 7, 5, 6]])
    streamer = RecordingStreamer()
    kwargs = dict(input_ids=ids, max_new_tokens=12, streamer=streamer,
                  assistant_strategy=hfspec.DraftModel(draft, num_tokens=4))
    if enabled:
        hfspec.enable()
        out = target.generate(**kwargs)
    else:
        out = spec(target, **kwargs)
    assert streamer.puts[0] == ids[0].tolist()  # HF puts the prompt itself
    assert sum(streamer.puts[1:], []) == out[0, ids.shape[1]:].tolist()
    assert streamer.ended


def test_text_streamer_decodes_the_output(target, draft):
    tok = tiny_tokenizer()
    streamer = TextIteratorStreamer(tok, skip_prompt=True)
    hfspec.enable()
    out = target.generate(input_ids=torch.tensor([[5, 6, 7]]), max_new_tokens=8, streamer=streamer,
                          assistant_strategy=hfspec.PromptLookup())
    text = "".join(streamer)
    assert text.split() == tok.decode(out[0, 3:]).split()


def test_stop_strings_with_tokenizer(target, draft):
    tok = tiny_tokenizer()
    ids = torch.tensor([[5, 6, 7, 5, 6]])
    free = target.generate(input_ids=ids, max_new_tokens=15, eos_token_id=None)
    words = tok.decode(free[0, 5:]).split()
    stop = words[3]
    expected = target.generate(input_ids=ids, max_new_tokens=15, eos_token_id=None, stop_strings=stop, tokenizer=tok)
    assert expected.shape[1] < free.shape[1]
    hfspec.enable()
    for strategy in (hfspec.DraftModel(draft, num_tokens=5), hfspec.PromptLookup()):
        got = target.generate(input_ids=ids, max_new_tokens=15, eos_token_id=None, stop_strings=stop,
                              tokenizer=tok, assistant_strategy=strategy)
        assert torch.equal(got, expected)


def test_return_dict_with_scores(target, draft):
    ids, mask = padded_batch()
    kwargs = dict(input_ids=ids, attention_mask=mask, max_new_tokens=7, return_dict_in_generate=True,
                  output_scores=True, eos_token_id=None)
    expected = target.generate(**kwargs)
    got = spec(target, assistant_strategy=hfspec.DraftModel(draft, num_tokens=3), **kwargs)
    assert torch.equal(got.sequences, expected.sequences)
    assert len(got.scores) == len(expected.scores) == 7
    for a, b in zip(got.scores, expected.scores, strict=True):
        torch.testing.assert_close(a, b.to(a.dtype), rtol=1e-6, atol=1e-6)


def test_user_stopping_criteria_and_logits_processor(target, draft):
    from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

    class BanToken(LogitsProcessor):
        def __call__(self, input_ids, scores):
            return scores.index_fill(1, torch.tensor([int(input_ids[0, -1]) % 7 + 3]), float("-inf"))

    class StopAfterNine(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return (input_ids == 9).any(dim=1)

    ids = torch.tensor([[5, 6, 7, 5, 6]])
    kwargs = dict(input_ids=ids, max_new_tokens=20, logits_processor=LogitsProcessorList([BanToken()]),
                  stopping_criteria=StoppingCriteriaList([StopAfterNine()]), eos_token_id=None)
    expected = target.generate(**kwargs)
    for strategy in (hfspec.DraftModel(draft, num_tokens=4), hfspec.PromptLookup()):
        assert torch.equal(spec(target, assistant_strategy=strategy, **kwargs), expected)


# ------------------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    "bad_kwargs, message",
    [
        (dict(assistant_strategy="draft"), "assistant_strategy must be an hfspec strategy"),
        (dict(assistant_strategy=hfspec.DraftModel), "assistant_strategy must be an hfspec strategy"),
        (dict(assistant_strategy=hfspec.PromptLookup(), num_beams=2), "beam search"),
        (dict(assistant_strategy=hfspec.PromptLookup(), output_attentions=True, return_dict_in_generate=True),
         "output_attentions"),
    ],
)
def test_bad_input_fails_before_model_work(target, bad_kwargs, message):
    counter = ForwardCounter(target)
    try:
        with pytest.raises(hfspec.ConfigurationError, match=message):
            spec(target, input_ids=torch.tensor([[5, 6, 7]]), max_new_tokens=4, **bad_kwargs)
        hfspec.enable()
        with pytest.raises(hfspec.ConfigurationError, match=message):
            target.generate(input_ids=torch.tensor([[5, 6, 7]]), max_new_tokens=4, **bad_kwargs)
        assert counter.calls == 0
    finally:
        counter.close()


def test_incompatible_draft_vocabulary_fails_before_model_work(target):
    other = tiny_model("llama", vocab_size=300)
    counter = ForwardCounter(target, other)
    with pytest.raises(hfspec.IncompatibleDraftError, match="vocabulary width 300"):
        spec(target, input_ids=torch.tensor([[5, 6]]), max_new_tokens=4, assistant_strategy=hfspec.DraftModel(other))
    assert counter.calls == 0
    counter.close()
    eos_mismatch = tiny_model("qwen2", eos_token_id=7)
    with pytest.raises(hfspec.IncompatibleDraftError, match="eos_token_id"):
        spec(target, input_ids=torch.tensor([[5, 6]]), max_new_tokens=4,
             assistant_strategy=hfspec.DraftModel(eos_mismatch))


@pytest.mark.parametrize("num_tokens", [0, -1, 2.5, None])
def test_num_tokens_must_be_positive_int(draft, num_tokens):
    with pytest.raises(hfspec.ConfigurationError, match="num_tokens"):
        hfspec.DraftModel(draft, num_tokens=num_tokens)
    with pytest.raises(hfspec.ConfigurationError, match="num_tokens"):
        hfspec.PromptLookup(num_tokens=num_tokens)


def test_other_constructor_errors(draft):
    with pytest.raises(hfspec.ConfigurationError, match="PreTrainedModel"):
        hfspec.DraftModel("not a model")
    with pytest.raises(hfspec.ConfigurationError, match="min_ngram"):
        hfspec.PromptLookup(min_ngram=3, max_ngram=2)
    with pytest.raises(hfspec.ConfigurationError, match="confidence_threshold"):
        hfspec.DraftModel(draft, confidence_threshold=1.5)


def test_enable_rejects_ambiguous_or_incomplete_calls(target, draft):
    hfspec.enable()
    ids = torch.tensor([[5, 6, 7]])
    with pytest.raises(hfspec.ConfigurationError, match="assistant_model"):
        target.generate(input_ids=ids, assistant_model=draft, assistant_strategy=hfspec.PromptLookup())
    with pytest.raises(hfspec.ConfigurationError, match="tokenizer"):
        target.generate(input_ids=ids, stop_strings="t5", assistant_strategy=hfspec.PromptLookup())
    with pytest.raises(hfspec.ConfigurationError, match="batch size 1"):
        target.generate(input_ids=torch.tensor([[5, 6], [7, 8]]), streamer=RecordingStreamer(),
                        assistant_strategy=hfspec.PromptLookup())
