"""GrammarAligned as a user meets it: learned state (persist, bound, reset, save/load), batches,
and every bad input refused with a clear error before any model work."""

from __future__ import annotations

import functools

import pytest
import torch
from transformers import TextStreamer, pipeline

import hfspec
from hfspec.grammar.aligned.trie import NodeBudget, PrefixTrie, Step
from hfspec.testing import tiny_json_tokenizer, tiny_model

VOCAB, EOS = 64, 1
PROMPT = [3, 27, 21, 22, 28, 29, 27]
SAMPLING = dict(do_sample=True, temperature=0.8, top_k=0, top_p=1.0, max_new_tokens=10)


@pytest.fixture(scope="module")
def setup():
    tok = tiny_json_tokenizer()
    model = tiny_model("llama", vocab_size=VOCAB, logit_scale=2.0, seed=21)
    return tok, model, hfspec.Regex(r"x[ab]{1,2}zabz", tokenizer=tok)


def run(model, grammar, ids=None, **kwargs):
    ids = torch.tensor([PROMPT]) if ids is None else ids
    options = {**SAMPLING, **kwargs}
    return model.generate(input_ids=ids, custom_generate=hfspec.generate, grammar=grammar, **options)


class NoForward:
    """Context manager: the model must not run (errors come before any model work)."""

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        def refuse(*args, **kwargs):
            raise AssertionError("the model ran before the error")

        self.hook = self.model.register_forward_pre_hook(refuse)

    def __exit__(self, *exc):
        self.hook.remove()


def texts(tok, out):
    return [tok.decode([t for t in row[len(PROMPT):].tolist() if t != EOS and t != 0]) for row in out]


# ---------------------------------------------------------------------------- results and state
def test_every_returned_row_is_a_complete_sentence(setup):
    tok, model, spec = setup
    aligned = hfspec.GrammarAligned(spec, method="exact")
    out = run(model, aligned, num_return_sequences=8)
    assert out.shape[0] == 8
    assert all(spec.matches(text) for text in texts(tok, out))
    assert aligned.last_call.samples == 8 and aligned.stats.samples == 8


def test_state_persists_across_calls_and_rows_share_a_prompt_trie(setup):
    _, model, spec = setup
    aligned = hfspec.GrammarAligned(spec, method="exact")
    run(model, aligned, num_return_sequences=20)
    first = aligned.last_call
    nodes = aligned.num_nodes
    run(model, aligned, num_return_sequences=20)
    assert len(aligned._tries) == 1  # the 20 rows of one prompt share a trie
    assert aligned.num_nodes >= nodes
    assert aligned.last_call.acceptance_rate >= first.acceptance_rate  # learned: fewer rejections
    assert aligned.stats.samples == 40


def test_padded_batch_of_different_prompts_keeps_tries_apart(setup):
    tok, model, spec = setup
    ids = torch.tensor([[0, 0] + PROMPT[:5], PROMPT])
    mask = (ids != 0).long()
    aligned = hfspec.GrammarAligned(spec, method="asap")
    out = run(model, aligned, ids=ids, attention_mask=mask)
    assert len(aligned._tries) == 2
    assert all(spec.matches(text) for text in texts(tok, out))


def test_other_sampling_settings_get_their_own_trie(setup):
    _, model, spec = setup
    aligned = hfspec.GrammarAligned(spec, method="asap")
    run(model, aligned)
    run(model, aligned, temperature=1.3)
    run(model, aligned, max_new_tokens=12)
    assert len(aligned._tries) == 3


def test_reset_forgets(setup):
    _, model, spec = setup
    aligned = hfspec.GrammarAligned(spec, method="asap")
    run(model, aligned)
    assert aligned.num_nodes > 1
    aligned.reset()
    assert aligned.num_nodes == 0 and not aligned._tries and aligned.stats.samples == 0


def test_memory_bound_holds(setup):
    _, model, spec = setup
    aligned = hfspec.GrammarAligned(spec, method="asap", max_nodes=7)
    run(model, aligned, num_return_sequences=16)
    assert aligned.num_nodes <= 7


def test_save_load_round_trip(setup, tmp_path):
    _, model, spec = setup
    aligned = hfspec.GrammarAligned(spec, method="exact")
    run(model, aligned, num_return_sequences=30)
    path = tmp_path / "trie.json.gz"
    aligned.save(path)
    loaded = hfspec.GrammarAligned.load(path, hfspec.Regex(r"x[ab]{1,2}zabz", tokenizer=spec.tokenizer))
    assert loaded.method == "exact" and loaded.num_nodes == aligned.num_nodes
    (key,) = aligned._tries
    assert loaded.estimate(key) == pytest.approx(aligned.estimate(key), rel=1e-12)
    for a, b in zip(aligned._tries[key].nodes(), loaded._tries[key].nodes(), strict=True):
        assert (a.allowed, a.fixed, sorted(a.children)) == (b.allowed, b.fixed, sorted(b.children))
        assert a.value == pytest.approx(b.value, rel=1e-9, abs=1e-300)
    run(model, loaded)  # usable


def test_loading_for_another_grammar_or_tokenizer_is_refused(setup, tmp_path):
    tok, model, spec = setup
    aligned = hfspec.GrammarAligned(spec, method="asap")
    run(model, aligned)
    path = tmp_path / "trie.json.gz"
    aligned.save(path)
    with pytest.raises(hfspec.GrammarError, match="another grammar"):
        hfspec.GrammarAligned.load(path, hfspec.Regex(r"x[ab]{1,3}zabz", tokenizer=tok))
    other_tok = tiny_json_tokenizer()
    other_tok.add_tokens(["qq"])
    loaded = hfspec.GrammarAligned.load(path, hfspec.Regex(r"x[ab]{1,2}zabz", tokenizer=other_tok))
    with NoForward(model), pytest.raises(hfspec.GrammarError, match="another tokenizer"):
        run(model, loaded)
    (tmp_path / "junk.gz").write_bytes(b"not gzip")
    with pytest.raises(hfspec.ConfigurationError, match="not a saved GrammarAligned"):
        hfspec.GrammarAligned.load(tmp_path / "junk.gz", spec)


def test_works_through_enable_and_pipelines(setup):
    tok, model, spec = setup
    hfspec.enable()
    try:
        aligned = hfspec.GrammarAligned(spec, method="exact")
        out = model.generate(input_ids=torch.tensor([PROMPT]), grammar=aligned, **SAMPLING)
        assert spec.matches(texts(tok, out)[0])
        pipe = pipeline("text-generation", model=model, tokenizer=tok)
        result = pipe(tok.decode(PROMPT), grammar=aligned, return_full_text=False, **SAMPLING)
        assert spec.matches(result[0]["generated_text"])
    finally:
        hfspec.disable()


def test_return_dict_reports_every_row_complete(setup):
    _, model, spec = setup
    out = run(model, hfspec.GrammarAligned(spec, method="asap"), return_dict_in_generate=True, num_return_sequences=3)
    assert isinstance(out, hfspec.GrammarDecoderOnlyOutput)
    assert bool(out.grammar_complete.all()) and bool(out.grammar_valid.all())


def test_speculation_stats_add_up_over_rounds(setup):
    _, model, spec = setup
    stats = hfspec.SpecStats()
    aligned = hfspec.GrammarAligned(spec, method="exact")
    run(model, aligned, num_return_sequences=10, speculation_stats=stats)
    assert stats.calls == aligned.last_call.rounds
    assert stats.target_forwards == aligned.last_call.target_forwards


def test_too_few_rounds_raise_alignment_error_with_the_rate(setup):
    _, model, spec = setup
    # an empty trie accepts a sample with probability about 1e-11 here
    with pytest.raises(hfspec.AlignmentError, match="acceptance rate"):
        run(model, hfspec.GrammarAligned(spec, method="exact", max_rounds=1), num_return_sequences=4)


# ---------------------------------------------------------------------------- the trie itself
def test_trie_values_are_the_recursive_estimate():
    """ĉ(x) = U(x) + Σ P(a|x)·ĉ(xa), with U exact zero once every allowed child is explored."""
    trie = PrefixTrie(NodeBudget(100))
    leaf = trie.insert(trie.root, [Step(0.5, 2, 7, 0.3), Step(0.4, 1, 1, 0.4)])
    trie.fix(leaf, 1.0)
    root, child = trie.root, trie.root.children[7]
    assert child.value == pytest.approx(0.4)  # one allowed token, explored, complete
    assert root.value == pytest.approx(0.2 + 0.3 * 0.4)  # U = 0.5 - 0.3, plus 0.3 * 0.4
    other = trie.insert(root, [Step(0.5, 2, 8, 0.2)])
    trie.fix(other, 0.0)
    assert root.unexplored == 0.0  # both allowed tokens explored
    assert root.value == pytest.approx(0.3 * 0.4)
    budget = NodeBudget(3)
    small = PrefixTrie(budget)
    assert small.insert(small.root, [Step(1.0, 5, t, 0.1) for t in range(5)]) is None
    assert budget.used == 3


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(do_sample=False), "do_sample=True"),
        (dict(num_beams=2), "beam"),
        (dict(output_scores=True, return_dict_in_generate=True), "output_scores"),
    ],
)
def test_bad_calls_are_refused_before_model_work(setup, kwargs, match):
    _, model, spec = setup
    options = {k: v for k, v in SAMPLING.items() if k not in kwargs}
    with NoForward(model), pytest.raises(hfspec.ConfigurationError, match=match):
        model.generate(input_ids=torch.tensor([PROMPT]), custom_generate=hfspec.generate,
                       grammar=hfspec.GrammarAligned(spec), **options, **kwargs)


def test_stop_strings_streamers_and_compiled_plans_are_refused(setup):
    tok, model, spec = setup
    with_tokenizer = functools.partial(hfspec.generate, tokenizer=tok)
    with NoForward(model), pytest.raises(hfspec.ConfigurationError, match="stop_strings"):
        model.generate(input_ids=torch.tensor([PROMPT]), custom_generate=with_tokenizer,
                       grammar=hfspec.GrammarAligned(spec), stop_strings=["zz"], **SAMPLING)
    with NoForward(model), pytest.raises(hfspec.ConfigurationError, match="streamer"):
        run(model, hfspec.GrammarAligned(spec), streamer=TextStreamer(tok))
    plan = hfspec.compile(model, hfspec.PromptLookup(num_tokens=3), backend="eager", capacity=64)
    with NoForward(model), pytest.raises(hfspec.ConfigurationError, match="compiled plan"):
        run(model, hfspec.GrammarAligned(spec), assistant_strategy=plan)


def test_unsatisfiable_grammar_is_refused_before_model_work(setup):
    tok, model, _ = setup
    spec = hfspec.Regex("QQ", tokenizer=tok)  # 'Q' is not in the tiny vocabulary
    with NoForward(model), pytest.raises(hfspec.GrammarError):
        run(model, hfspec.GrammarAligned(spec, method="exact"))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(method="smc"), hfspec.ConfigurationError, "not implemented"),
        (dict(method="greedy"), hfspec.ConfigurationError, "method must be"),
        (dict(max_nodes=0), hfspec.ConfigurationError, "max_nodes"),
        (dict(max_rounds=0), hfspec.ConfigurationError, "max_rounds"),
    ],
)
def test_bad_options(setup, kwargs, error, match):
    _, _, spec = setup
    with pytest.raises(error, match=match):
        hfspec.GrammarAligned(spec, **kwargs)


def test_spec_must_be_a_grammar(setup):
    _, _, spec = setup
    with pytest.raises(hfspec.GrammarError):
        hfspec.GrammarAligned("x[ab]")
    with pytest.raises(hfspec.GrammarError):
        hfspec.GrammarAligned(hfspec.GrammarAligned(spec))


def test_save_before_any_call_is_refused(setup, tmp_path):
    _, _, spec = setup
    with pytest.raises(hfspec.ConfigurationError, match="Nothing learned"):
        hfspec.GrammarAligned(spec).save(tmp_path / "x.gz")
