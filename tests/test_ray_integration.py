"""hfspec.integrations.ray on a local two-CPU Ray cluster with tiny in-process models.

The Ray path must give, record for record, what a direct grammar-constrained ``generate`` gives
(greedy, batch 1, no speculation: so batching, left padding and speculation inside the actors
change nothing); every parsed object must validate; bad calls fail on the driver, before actors.
One Ray execution only (actors start in seconds each); the class the actors run is checked
in-process for every strategy.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import json
import sys
import warnings
from typing import Literal

import jsonschema
import numpy as np
import pydantic
import pytest
from hfspec.integrations.extraction import STRATEGIES, Extractor  # what the actors run; needs no Ray

import hfspec
from hfspec.testing import perturbed_copy, tiny_json_tokenizer, tiny_model

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray")  # Ray's own, not ours
requires_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason='needs pip install "hfspec[ray]"')


class Record(pydantic.BaseModel):
    a: Literal[1, 2, 12]
    b: str = pydantic.Field(pattern="^(x|yz)$")
    c: bool


def tiny_target():
    return tiny_model("llama", vocab_size=64, logit_scale=4.0, seed=3)


def tiny_draft():
    return perturbed_copy(tiny_target(), scale=0.05)


# Prompts of different lengths (left padding inside a batch); characters of the tiny JSON vocabulary.
PROMPTS = ['{"a": 1}', "[1, 2, 3]", "abc", '{"x": "yz", "n": 12}', "true", '"t"', "0", "[[null]]"]
MODELS = dict(target=tiny_target, draft=tiny_draft, tokenizer=tiny_json_tokenizer)


@pytest.fixture(scope="module")
def cluster():
    ray = pytest.importorskip("ray")
    from ray import cloudpickle

    # Workers cannot import this test module: ship its loaders by value.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


@functools.cache
def direct(prompt: str, max_new_tokens: int = 40) -> str:
    """The reference: plain grammar-constrained greedy generate on one record."""
    tok = tiny_json_tokenizer()
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    spec = hfspec.JSONSchema(Record, any_whitespace=False, tokenizer=tok)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", hfspec.IncompleteOutputWarning)
        out = tiny_target().generate(input_ids=ids, max_new_tokens=max_new_tokens, do_sample=False,
                                     custom_generate=hfspec.generate, grammar=spec, on_incomplete="flag")
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


@requires_ray
def test_extract_on_ray_equals_direct_generate_and_validates(cluster):
    from hfspec.integrations.ray import OUTPUT_COLUMNS, extract

    ds = cluster.data.from_items([{"id": i, "prompt": p} for i, p in enumerate(PROMPTS)])
    out = extract(ds, Record, **MODELS, max_new_tokens=40, batch_size=3, concurrency=1)  # JumpForward(DraftModel)
    rows = out.take_all()
    assert sorted(r["id"] for r in rows) == list(range(len(PROMPTS)))
    schema = Record.model_json_schema()
    for row in rows:
        assert set(OUTPUT_COLUMNS) <= set(row)
        assert row["generated_text"] == direct(row["prompt"]), row
        assert row["json_ok"] and row["grammar_complete"] and row["schema_valid"], row
        value = json.loads(row["parsed_json"])
        jsonschema.validate(value, schema)
        Record.model_validate(value)
        assert row["errors"] == "" and 0 < row["num_tokens"] <= 40


@requires_ray
def test_bad_calls_fail_on_the_driver(cluster):
    from hfspec.integrations.ray import extract

    ds = cluster.data.from_items([{"text": "abc"}])
    with pytest.raises(hfspec.ConfigurationError, match="no prompt column 'prompt'; columns: \\['text'\\]"):
        extract(ds, Record, **MODELS)
    good = cluster.data.from_items([{"prompt": "abc"}])
    with pytest.raises(hfspec.ConfigurationError, match="unknown strategy 'beam'; choose one of auto, none, draft"):
        extract(good, Record, **MODELS, strategy="beam")
    with pytest.raises(hfspec.ConfigurationError, match="needs a draft model"):
        extract(good, Record, **{**MODELS, "draft": None}, strategy="draft")
    with pytest.raises(hfspec.ConfigurationError, match="jump_forward= must be True or False"):
        extract(good, Record, **MODELS, jump_forward="yes")
    with pytest.raises(hfspec.ConfigurationError, match="tokenizer= is needed"):
        extract(good, Record, target=tiny_target, draft=None)
    with pytest.raises(hfspec.ConfigurationError, match="produces JSON"):
        extract(good, hfspec.Regex("a+"), **MODELS)
    with pytest.raises(hfspec.ConfigurationError, match="generate_kwargs may not set \\['grammar'\\]"):
        extract(good, Record, **MODELS, generate_kwargs={"grammar": None})
    with pytest.raises(hfspec.ConfigurationError, match="concurrency"):
        extract(good, Record, **MODELS, concurrency=0)
    with pytest.raises(hfspec.ConfigurationError, match="overwritten"):
        extract(cluster.data.from_items([{"prompt": "a", "errors": 0}]), Record, **MODELS)


# The class each actor runs, called in-process: every strategy, cut records, templates, bad batches.


@pytest.mark.parametrize("jump_forward", [True, False])
@pytest.mark.parametrize("strategy", [*STRATEGIES, lambda draft: hfspec.PromptLookup(num_tokens=2)])
def test_every_strategy_in_a_padded_batch_equals_direct_generate(strategy, jump_forward):
    ex = Extractor(Record.model_json_schema(), **MODELS, strategy=strategy, jump_forward=jump_forward, num_tokens=3,
                   max_new_tokens=40)
    out = ex({"prompt": np.array(PROMPTS)})
    assert list(out["generated_text"]) == [direct(p) for p in PROMPTS]
    assert all(out["schema_valid"]) and all(out["grammar_complete"])


def test_records_cut_by_max_new_tokens_are_flagged_not_dropped():
    out = Extractor(Record, **MODELS, max_new_tokens=6)({"prompt": np.array(PROMPTS)})
    assert list(out["generated_text"]) == [direct(p, max_new_tokens=6) for p in PROMPTS]
    assert not any(out["grammar_complete"]) and not any(out["json_ok"]) and not any(out["schema_valid"])
    assert list(out["parsed_json"]) == [None] * len(PROMPTS) and list(out["num_tokens"]) == [6] * len(PROMPTS)
    assert all("raise max_new_tokens" in e for e in out["errors"])


def test_chat_template_and_bad_batches():
    def templated():
        tok = tiny_json_tokenizer()
        tok.chat_template = "{% for m in messages %}[{{ m['content'] }}]{% endfor %}"
        return tok

    ex = Extractor(Record, target=tiny_target, draft=None, tokenizer=templated, system_prompt="ab")
    assert ex.prompts({"prompt": np.array(["12"])}) == ["[ab][12]"]
    out = ex({"prompt": np.array(["12", "{}"]), "k": np.array([7, 8])})
    assert list(out["k"]) == [7, 8] and all(out["schema_valid"])
    with pytest.raises(hfspec.ConfigurationError, match="no prompt column 'prompt'.*'text'"):
        ex({"text": np.array(["12"])})
    with pytest.raises(hfspec.ConfigurationError, match="non-empty string"):
        ex({"prompt": np.array([None], dtype=object)})


def test_import_without_ray_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    monkeypatch.delitem(sys.modules, "ray.data", raising=False)
    monkeypatch.delitem(sys.modules, "hfspec.integrations.ray", raising=False)
    with pytest.raises(ImportError, match=r'pip install "hfspec\[ray\]"'):
        importlib.import_module("hfspec.integrations.ray")
