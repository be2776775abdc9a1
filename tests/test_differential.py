"""Seeded randomized differential test: hfspec against plain ``model.generate``, token for token
and score for score.

Each case draws, from its own seeded ``random.Random``: an architecture (the tiny models of
``hfspec.testing`` plus tiny Mistral / Phi3 / Gemma / Gemma2 / sliding-window Qwen2 configs built
here), a strategy (``DraftModel`` over a perturbed copy, or ``PromptLookup``) with 1-6 drafts, a
batch of 1-4 left-padded prompts (Gemma2: equal lengths, see ``make_case``), ``max_new_tokens``, no / one / two EOS ids, HF logits
processors (``repetition_penalty``, ``no_repeat_ngram_size``, ``min_new_tokens``,
``bad_words_ids``, ``suppress_tokens``, ``sequence_bias``, ``forced_eos_token_id``), batch-aware
custom stopping criteria, ``stop_strings``, ``output_scores`` and (batch 1) a streamer. Greedy,
float64, so a mismatch is a bug, not rounding. Scores are compared (atol 1e-5) for the rows still
generating at each step.

Budget: ``DEFAULT_CASES`` by default (well under 60 s on one core); ``SLOW_CASES`` with
HFSPEC_SLOW=1 (the ``slow`` marker). A failing case is reproduced alone by its id
(``pytest tests/test_differential.py -k case0042``).

Two switches below mark what the engine did not match yet (issue 9); both are on now. With a
switch off, the cases it covers still run, as xfail, instead of being dropped. ``SLIDING_WINDOW_SUPPORTED`` covers sliding-window and hybrid architectures;
``FINISHED_ROW_PARITY`` covers rows after a stop without an EOS id (xfail) and the scores of rows
that already finished (compared only when it is on).
"""

from __future__ import annotations

import functools
import os
import random
from dataclasses import dataclass, field

import pytest
import torch
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    GemmaConfig,
    GemmaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    StoppingCriteria,
    StoppingCriteriaList,
)
from transformers.generation.streamers import BaseStreamer

import hfspec
from hfspec.testing import perturbed_copy, tiny_model, tiny_tokenizer

# Issue 9 item 1: sliding-window and hybrid attention (Mistral / Qwen2 with a sliding window, Gemma2).
SLIDING_WINDOW_SUPPORTED = True
# Issue 9 items 3 and 4: after a row stops on a custom criterion or stop string while the call has
# no EOS id, HF keeps writing real tokens to it (hfspec pads); and ``output_scores`` of rows that
# already finished (HF: the processed scores it computed; hfspec: -inf).
FINISHED_ROW_PARITY = True

SLOW = os.environ.get("HFSPEC_SLOW") == "1"
DEFAULT_CASES = 150
SLOW_CASES = 1500
SEED = 20260901
VOCAB = 64

HF_ARCHS = ("llama", "qwen2", "gpt2")  # hfspec.testing.tiny_model
LOCAL_ARCHS = ("mistral", "phi3", "gemma")  # built here, full attention
SLIDING_ARCHS = ("mistral_sw", "qwen2_sw", "gemma2")  # built here, sliding-window / hybrid layers
ARCHS = HF_ARCHS + LOCAL_ARCHS + SLIDING_ARCHS


# ------------------------------------------------------------------------------ models
def _local_model(arch: str, seed: int):
    common = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  pad_token_id=0, eos_token_id=1, bos_token_id=None)
    config_cls, model_cls, extra = {
        "mistral": (MistralConfig, MistralForCausalLM, dict(sliding_window=None)),
        "phi3": (Phi3Config, Phi3ForCausalLM, dict()),
        "gemma": (GemmaConfig, GemmaForCausalLM, dict(head_dim=8)),
        "mistral_sw": (MistralConfig, MistralForCausalLM, dict(sliding_window=6)),
        # layer 0 full, layer 1 sliding: a hybrid cache
        "qwen2_sw": (Qwen2Config, Qwen2ForCausalLM, dict(use_sliding_window=True, sliding_window=6,
                                                          max_window_layers=1)),
        "gemma2": (Gemma2Config, Gemma2ForCausalLM, dict(head_dim=8, sliding_window=6, query_pre_attn_scalar=8)),
    }[arch]
    torch.manual_seed(seed)
    model = model_cls(config_cls(**common, **extra)).double().eval()
    with torch.no_grad():  # peakier than a random init, as tiny_model(logit_scale=8)
        head = model.get_output_embeddings()
        head.weight = torch.nn.Parameter(head.weight.detach().clone() * 8.0)
    model.generation_config.pad_token_id = 0
    model.generation_config.eos_token_id = None
    model.generation_config.bos_token_id = None
    return model


@functools.cache
def target_model(arch: str, seed: int):
    if arch in HF_ARCHS:
        return tiny_model(arch, vocab_size=VOCAB, logit_scale=8.0, eos_token_id=None, seed=seed)
    return _local_model(arch, seed)


@functools.cache
def draft_model(arch: str, seed: int, noise: float):
    return perturbed_copy(target_model(arch, seed), noise, seed=seed + 100)


@functools.lru_cache(maxsize=1)
def word_tokenizer():
    return tiny_tokenizer(VOCAB)


# ------------------------------------------------------------------------------ criteria, streamer
class RowBudget(StoppingCriteria):
    """Per-row new-token budgets: HF's (B,) verdict contract."""

    def __init__(self, prompt_len: int, budgets: list[int]):
        self.prompt_len, self.budgets = prompt_len, torch.tensor(budgets)

    def __call__(self, input_ids, scores, **kwargs):
        return (input_ids.shape[1] - self.prompt_len) >= self.budgets

    def __repr__(self):
        return f"RowBudget({self.budgets.tolist()})"


class LastTokenIn(StoppingCriteria):
    """Stops a row whose last token is one of ``tokens`` (an EOS-like criterion without an EOS id)."""

    def __init__(self, tokens: list[int]):
        self.tokens = torch.tensor(tokens)

    def __call__(self, input_ids, scores, **kwargs):
        return torch.isin(input_ids[:, -1], self.tokens)

    def __repr__(self):
        return f"LastTokenIn({self.tokens.tolist()})"


class Recording(BaseStreamer):
    def __init__(self):
        self.tokens: list[int] = []
        self.ended = False

    def put(self, value):
        self.tokens.extend(value.reshape(-1).tolist())

    def end(self):
        self.ended = True


# ------------------------------------------------------------------------------ cases
@dataclass
class Case:
    index: int
    arch: str
    model_seed: int
    strategy: str  # "draft" | "lookup"
    num_tokens: int
    draft_noise: float
    max_ngram: int
    prompts: list[list[int]]
    max_new_tokens: int
    eos_positions: list[int]  # EOS ids are taken from plain decoding's output at these positions
    processors: dict = field(default_factory=dict)
    criterion: str | None = None  # None | "budget" | "last_token"
    criterion_args: list[int] = field(default_factory=list)
    stop_string_position: int | None = None
    output_scores: bool = False
    streamer: bool = False

    @property
    def batch(self) -> int:
        return len(self.prompts)

    @property
    def name(self) -> str:
        extras = [k for k in ("criterion", "stop_string_position") if getattr(self, k) is not None]
        return "-".join([f"case{self.index:04d}", self.arch, f"{self.strategy}{self.num_tokens}", f"b{self.batch}",
                         *sorted(self.processors), *extras, *(["scores"] if self.output_scores else [])])

    @property
    def sliding(self) -> bool:
        return self.arch in SLIDING_ARCHS

    @property
    def may_continue_finished_rows(self) -> bool:
        """Issue 9 item 3: a row can stop on a criterion / stop string while the call has no EOS id."""
        stops_without_eos = self.criterion is not None or self.stop_string_position is not None
        return not self.eos_positions and stops_without_eos and self.batch > 1


def make_case(index: int) -> Case:
    rng = random.Random(SEED * 7919 + index)
    arch = rng.choice(ARCHS)
    batch = rng.randint(1, 4)
    prompts = []
    same_length = rng.randint(1, 10)
    for _ in range(batch):
        # HF 5.23's Gemma2 (eager attention) returns NaN logits for every position of a left-padded
        # row, so plain generate is no reference there: Gemma2 batches get equal-length prompts
        length = same_length if arch == "gemma2" else rng.randint(1, 10)
        motif = [rng.randrange(2, VOCAB) for _ in range(rng.randint(1, 4))]
        # repeated motifs with noise: prompt lookup finds matches, drafts get accepted and rejected
        prompt = [motif[i % len(motif)] if rng.random() < 0.7 else rng.randrange(2, VOCAB) for i in range(length)]
        prompts.append(prompt)
    max_new = rng.randint(1, 16)
    eos_positions = rng.choice([[], [rng.randint(0, 12)], [rng.randint(0, 12), rng.randint(0, 12)]])
    processors: dict = {}
    if rng.random() < 0.3:
        processors["repetition_penalty"] = rng.choice([1.3, 2.0, 0.8])
    if rng.random() < 0.25:
        processors["no_repeat_ngram_size"] = rng.randint(2, 3)
    if rng.random() < 0.25 and eos_positions:
        processors["min_new_tokens"] = rng.randint(1, max_new)
    if rng.random() < 0.25:
        processors["bad_words_ids"] = [[rng.randrange(2, VOCAB)], [rng.randrange(2, VOCAB), rng.randrange(2, VOCAB)]]
    if rng.random() < 0.25:
        processors["suppress_tokens"] = rng.sample(range(2, VOCAB), rng.randint(1, 3))
    if rng.random() < 0.25:
        processors["sequence_bias"] = [[[rng.randrange(2, VOCAB)], rng.choice([-3.0, 2.5])],
                                       [[rng.randrange(2, VOCAB), rng.randrange(2, VOCAB)], 4.0]]
    if rng.random() < 0.2 and eos_positions:
        processors["forced_eos_token_id"] = True  # the first EOS id, forced at max_length - 1
    criterion, criterion_args = None, []
    if rng.random() < 0.3:
        criterion = rng.choice(["budget", "last_token"])
        if criterion == "budget":
            criterion_args = [rng.randint(1, max_new) for _ in range(batch)]
        else:
            criterion_args = [rng.randint(0, 12)]  # a token of plain decoding's output
    stop_string_position = rng.randint(0, 12) if rng.random() < 0.15 else None
    strategy = rng.choice(["draft", "lookup"])
    return Case(
        index=index, arch=arch, model_seed=rng.randint(0, 2), strategy=strategy, num_tokens=rng.randint(1, 6),
        draft_noise=rng.choice([0.005, 0.02, 0.1]), max_ngram=rng.randint(2, 3), prompts=prompts,
        max_new_tokens=max_new, eos_positions=eos_positions, processors=processors, criterion=criterion,
        criterion_args=criterion_args, stop_string_position=stop_string_position,
        output_scores=rng.random() < 0.5, streamer=batch == 1 and rng.random() < 0.2,
    )


CASES = [
    pytest.param(case, id=case.name, marks=[pytest.mark.slow] if case.index >= DEFAULT_CASES else [])
    for case in map(make_case, range(SLOW_CASES if SLOW else DEFAULT_CASES))
]


def left_padded(prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.zeros((len(prompts), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt)
        mask[row, width - len(prompt) :] = 1
    return ids, mask


def build_call(case: Case, model) -> tuple[dict, dict]:
    """(generate kwargs, hfspec-only extras). Token choices that should fire (EOS ids, criterion
    tokens, stop strings) come from plain greedy decoding of the same prompts."""
    ids, mask = left_padded(case.prompts)
    free = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=13, do_sample=False, eos_token_id=None)
    produced = free[0, ids.shape[1] :].tolist()
    kwargs = dict(input_ids=ids, attention_mask=mask, max_new_tokens=case.max_new_tokens, do_sample=False,
                  eos_token_id=[produced[p] for p in case.eos_positions] or None)
    for name, value in case.processors.items():
        kwargs[name] = kwargs["eos_token_id"][0] if name == "forced_eos_token_id" else value
    if "forced_eos_token_id" in kwargs and "suppress_tokens" in kwargs:  # HF refuses suppressing the forced id
        kwargs["suppress_tokens"] = [t for t in kwargs["suppress_tokens"] if t != kwargs["forced_eos_token_id"]] or None
    criteria = []
    if case.criterion == "budget":
        criteria.append(RowBudget(ids.shape[1], case.criterion_args))
    elif case.criterion == "last_token":
        criteria.append(LastTokenIn([produced[p] for p in case.criterion_args]))
    if criteria:
        kwargs["stopping_criteria"] = StoppingCriteriaList(criteria)
    if case.stop_string_position is not None:
        kwargs["stop_strings"] = word_tokenizer().convert_ids_to_tokens(produced[case.stop_string_position])
    if case.output_scores:
        kwargs.update(return_dict_in_generate=True, output_scores=True)
    if case.strategy == "draft":
        strategy = hfspec.DraftModel(draft_model(case.arch, case.model_seed, case.draft_noise), num_tokens=case.num_tokens)
    else:
        strategy = hfspec.PromptLookup(num_tokens=case.num_tokens, max_ngram=case.max_ngram)
    return kwargs, dict(assistant_strategy=strategy)


def run_both(case: Case):
    model = target_model(case.arch, case.model_seed)
    kwargs, extra = build_call(case, model)
    tok = word_tokenizer() if "stop_strings" in kwargs else None
    hf_kwargs, spec_kwargs = dict(kwargs), dict(kwargs, **extra)
    if tok is not None:
        hf_kwargs["tokenizer"] = tok
    decode = functools.partial(hfspec.generate, tokenizer=tok) if tok is not None else hfspec.generate
    streams = (Recording(), Recording()) if case.streamer else (None, None)
    if case.streamer:
        hf_kwargs["streamer"], spec_kwargs["streamer"] = streams
    expected = model.generate(**hf_kwargs)
    got = model.generate(custom_generate=decode, **spec_kwargs)
    return expected, got, streams


def assert_same(case: Case, expected, got, streams) -> None:
    want = expected.sequences if case.output_scores else expected
    have = got.sequences if case.output_scores else got
    assert have.shape == want.shape and torch.equal(have, want), f"sequences differ:\nHF     {want.tolist()}\nhfspec {have.tolist()}"
    if case.output_scores:
        assert len(got.scores) == len(expected.scores)
        for step, (a, b) in enumerate(zip(got.scores, expected.scores, strict=True)):
            rows = torch.ones(a.shape[0], dtype=torch.bool) if FINISHED_ROW_PARITY else torch.isfinite(a).any(dim=-1)
            torch.testing.assert_close(a[rows], b[rows].to(a.dtype), rtol=1e-5, atol=1e-5,
                                       msg=lambda m, step=step: f"scores differ at step {step}: {m}")
    if case.streamer:
        hf_stream, spec_stream = streams
        assert spec_stream.tokens == hf_stream.tokens and spec_stream.ended


@pytest.mark.parametrize("case", CASES)
def test_differential(case, request):
    if case.sliding and not SLIDING_WINDOW_SUPPORTED:
        request.applymarker(pytest.mark.xfail(reason="issue 9 item 1: sliding-window attention (SLIDING_WINDOW_SUPPORTED)"))
    if case.may_continue_finished_rows and not FINISHED_ROW_PARITY:
        request.applymarker(pytest.mark.xfail(reason="issue 9 item 3: rows after a stop without EOS (FINISHED_ROW_PARITY)"))
    expected, got, streams = run_both(case)
    assert_same(case, expected, got, streams)


def test_case_generator_covers_every_option():
    """The default budget exercises every axis (so a generator change cannot silently drop one)."""
    cases = [make_case(i) for i in range(DEFAULT_CASES)]
    assert {c.arch for c in cases} == set(ARCHS)
    assert {c.strategy for c in cases} == {"draft", "lookup"}
    assert {c.batch for c in cases} == {1, 2, 3, 4}
    assert {c.num_tokens for c in cases} == set(range(1, 7))
    assert {len(c.eos_positions) for c in cases} == {0, 1, 2}
    assert set().union(*(c.processors for c in cases)) == {
        "repetition_penalty", "no_repeat_ngram_size", "min_new_tokens", "bad_words_ids", "suppress_tokens",
        "sequence_bias", "forced_eos_token_id"}
    assert {c.criterion for c in cases} == {None, "budget", "last_token"}
    assert any(c.stop_string_position is not None for c in cases)
    assert any(c.output_scores and c.batch > 1 for c in cases) and any(c.streamer for c in cases)
    assert [make_case(i) for i in range(5)] == cases[:5]  # deterministic
