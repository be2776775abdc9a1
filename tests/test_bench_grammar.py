"""hfspec bench-grammar: the tiny benchmark end to end, and the deterministic schema selection.

No real model is loaded: the benchmark runs on tiny random models (--tiny); the selection test
uses the packaged Qwen2.5-Coder tokenizer and the vendored JSONSchemaBench.
"""

from __future__ import annotations

import json
import os

import pytest

pytest.importorskip("xgrammar")
jsonschema = pytest.importorskip("jsonschema")

from hfspec.bench import cli  # noqa: E402
from hfspec.bench import grammar as bench_grammar  # noqa: E402
from hfspec.bench import markdown as markdown_lib  # noqa: E402

PINNED_SIX = [  # SELECTION_RULE on the vendored tests/data/jsonschemabench: one per family, families alphabetical
    "BFCL_java_24",
    "Github_easy---o30126",
    "Glaiveai2K---calculate_area_0e6127c1",
    "Handwritten---dep8",
    "JME_11",
    "JsonSchemaStore---commands",
]


@pytest.fixture(scope="module")
def tiny_results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench_grammar")
    out, markdown = tmp / "grammar-tiny.json", tmp / "BENCHMARKS.md"
    argv = ["bench-grammar", "--tiny", "--threads", "1", "--max-new-tokens", "24", "--warmup-tokens", "4"]
    argv += ["--out", str(out), "--markdown", str(markdown), "--no-progress"]
    assert cli.main(argv) == 0
    return json.loads(out.read_text()), out, markdown


def test_tiny_benchmark_writes_results_and_markdown(tiny_results):
    results, out, markdown = tiny_results
    assert results["schema"] == bench_grammar.SCHEMA
    assert results["command"].startswith("hfspec bench-grammar --tiny")
    assert results["settings"]["configs"] == list(bench_grammar.CONFIGS)
    assert {"cpu_model", "torch", "transformers", "git", "load_average"} <= set(results["machine"])
    names = [s["name"] for s in results["workload"]["schemas"]]
    assert names == list(bench_grammar.TINY_SCHEMAS)
    assert all(s["prompt_ids"] for s in results["workload"]["schemas"])
    assert len(results["warmup"]) == len(bench_grammar.CONFIGS)
    assert len(results["runs"]) == len(bench_grammar.CONFIGS) * len(names)
    text = markdown.read_text()
    key = markdown_lib.section_key(out, markdown)
    assert markdown_lib.SECTION_BEGIN.format(key=key) in text and markdown_lib.SECTION_END.format(key=key) in text
    assert f"Command: `{results['command']}`" in text
    assert "### Per config" in text and "### Per schema" in text


def test_every_grammar_config_is_identical_to_hf_xgrammar(tiny_results):
    results, _, _ = tiny_results
    assert results["all_identical"] is True
    runs = results["runs"]
    for run in runs:
        if run["config"] in bench_grammar.GRAMMAR_CONFIGS:
            assert run["reference"] == "hf_xgrammar" and run["identical"] is True, run["config"]
            baseline = next(r for r in runs if r["schema"] == run["schema"] and r["config"] == "hf_xgrammar")
            assert run["output_ids"] == baseline["output_ids"]
            assert run["complete"] == baseline["complete"] and run["valid"] == baseline["valid"]
        else:  # the unconstrained references agree with each other
            assert run["reference"] == "hfspec_draft" and run["identical"] is True
    # hfspec reports the same verdict as the benchmark's own jsonschema check
    for run in runs:
        if run["config"] in bench_grammar.GRAMMAR_CONFIGS and run["config"].startswith("hfspec"):
            assert run["engine_valid"] == run["valid"]
            assert (run["warning"] is None) == run["valid"]


def test_summary_fields(tiny_results):
    results, _, _ = tiny_results
    summary = results["summary"]
    rows = {c["config"]: c for c in summary["configs"]}
    assert list(rows) == list(bench_grammar.CONFIGS)
    for row in rows.values():
        for field in (
            "tokens_per_s",
            "tau",
            "speedup_vs_hf_xgrammar",
            "ratio_vs_unconstrained",
            "mean_target_forwards",
            "grammar_us_per_token",
            "complete",
            "valid",
            "runs",
            "identical",
        ):
            assert field in row, field
        assert row["tokens_per_s"] > 0 and row["tau"] >= 1
        assert 0 <= row["valid"] <= row["complete"] <= row["runs"] == 2
    assert rows["hf_xgrammar"]["speedup_vs_hf_xgrammar"] == pytest.approx(1.0)
    for config, free in bench_grammar.UNCONSTRAINED_OF.items():
        assert rows[config]["unconstrained"] == free and rows[config]["ratio_vs_unconstrained"] > 0
    for config in ("hf_xgrammar", "hfspec_grammar", "hfspec_grammar_jump"):
        assert rows[config]["grammar_us_per_token"] > 0
    assert rows["hfspec_draft"]["grammar_us_per_token"] is None
    # plain decoding: one target forward per new token; jump-forward never needs more forwards
    assert rows["hf_xgrammar"]["tau"] == pytest.approx(1.0)
    assert rows["hfspec_grammar"]["tau"] == pytest.approx(1.0)
    jump = {j["with_jump"]: j for j in summary["jump_forward"]}
    assert set(jump) == set(bench_grammar.JUMP_PAIRS)
    assert jump["hfspec_grammar_jump"]["mean_saved"] >= 0
    assert (
        jump["hfspec_grammar_jump"]["mean_forwards_without"] == rows["hfspec_grammar"]["mean_target_forwards"]
    )
    assert len(summary["per_schema"]) == len(bench_grammar.CONFIGS) * 2


def test_render_reproduces_the_section(tiny_results, tmp_path):
    results, out, markdown = tiny_results
    copy = tmp_path / "other.md"
    assert cli.main(["render", str(out), "--markdown", str(copy)]) == 0
    key = markdown_lib.section_key(out, copy)
    assert bench_grammar.render_section(results, key).split("Every run:")[0] in copy.read_text()  # + figures


def test_configs_option_always_adds_the_reference():
    args = cli.build_parser().parse_args(
        ["bench-grammar", "--tiny", "--configs", "hfspec_grammar_jump,hfspec_draft"]
    )
    settings = cli.grammar_settings_from_args(args)
    assert settings.configs == ("hf_xgrammar", "hfspec_grammar_jump", "hfspec_draft")
    assert settings.max_new_tokens == 192 and settings.schemas == 6
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["bench-grammar", "--configs", "hf_plain"])


def test_prompt_text():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    instance = {"a": 3, "b": {"c": [True, "x y"], "d": "two\nlines"}, "e": []}
    assert bench_grammar.flatten_record(instance) == [
        "a: 3",
        "b.c[0]: true",
        "b.c[1]: x y",
        'b.d: "two\\nlines"',
        "e: []",
    ]
    text = bench_grammar.user_message(schema, {"a": 3})
    assert text == (
        "Extract the record below as a JSON object that conforms to this JSON Schema.\n\n"
        'JSON Schema:\n{"type":"object","properties":{"a":{"type":"integer"}}}\n\n'
        "Record:\na: 3\n\nReply with the JSON object only."
    )


@pytest.fixture(scope="module")
def qwen_tokenizer():
    from hfspec.testing import qwen_tokenizer

    return qwen_tokenizer()


def test_schema_selection_is_deterministic_on_jsonschemabench(qwen_tokenizer, jsonschemabench):
    data_dir = jsonschemabench
    six = bench_grammar.select_schemas(data_dir, qwen_tokenizer, 151936, 6)
    again = bench_grammar.select_schemas(data_dir, qwen_tokenizer, 151936, 6)
    three = bench_grammar.select_schemas(data_dir, qwen_tokenizer, 151936, 3)
    names = [c.name for c in six]
    assert names == [c.name for c in again] and names[:3] == [c.name for c in three]
    if "HFSPEC_JSONSCHEMABENCH" not in os.environ:  # the vendored copy
        assert names == PINNED_SIX
    families = [bench_grammar.family(c.group) for c in six]
    assert families == sorted(set(families))  # one per family, in alphabetical order
    for case in six:
        assert len(bench_grammar.compact(case.schema)) <= bench_grammar.MAX_SCHEMA_CHARS
        assert isinstance(case.instance, dict) and case.instance
        assert len(json.dumps(case.instance)) <= bench_grammar.MAX_INSTANCE_CHARS
        jsonschema.validate(case.instance, case.schema)
        assert case.spec.any_whitespace is False
