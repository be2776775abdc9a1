"""`hfspec bench --tiny` end to end (tiny random models, seconds) plus the benchmark's pure helpers.

No timing assertions: speed is measured by benchmarks, never asserted in tests (DESIGN.md section 7).
"""

from __future__ import annotations

import json

import pytest
import torch

from hfspec.bench import batch as bench_batch
from hfspec.bench import cli, harness
from hfspec.bench import speed as bench
from hfspec.testing import tiny_model, tiny_tokenizer

MODES = ("greedy", "sample")
PROMPTS = ("json", "edit")
REPEATS = 2


def _bench(out, markdown, *extra: str) -> int:
    return cli.main(
        [
            "bench",
            "--tiny",
            "--max-new-tokens",
            "5",
            "--threads",
            "1",
            "--no-progress",
            "--out",
            str(out),
            "--markdown",
            str(markdown),
            *extra,
        ]
    )


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One full tiny benchmark (every config, both modes, two prompts, two repetitions)."""
    tmp = tmp_path_factory.mktemp("bench")
    out, markdown = tmp / "results" / "tiny.json", tmp / "BENCHMARKS.md"
    threads = torch.get_num_threads()
    try:
        rc = _bench(
            out,
            markdown,
            "--repeats",
            str(REPEATS),
            "--modes",
            ",".join(MODES),
            "--prompts",
            ",".join(PROMPTS),
        )
    finally:
        torch.set_num_threads(threads)  # the CLI sets it process-wide; do not leak into other tests
    assert rc == 0
    return out, markdown, json.loads(out.read_text())


def test_results_structure(tiny_run):
    _, _, results = tiny_run
    assert results["schema"] == bench.SCHEMA
    assert results["command"].startswith("hfspec bench --tiny --max-new-tokens 5")
    for key in ("cpu_count", "torch_threads", "torch", "transformers", "date"):
        assert key in results["machine"]
    assert results["machine"]["torch_threads"] == 1
    settings = results["settings"]
    assert settings["tiny"] and settings["repeats"] == REPEATS and tuple(settings["configs"]) == bench.DEFAULT_CONFIGS
    assert set(results["strategies"]) == set(bench.DEFAULT_CONFIGS) - {"hf_plain"}
    assert results["strategies"]["hf_assisted"]["num_assistant_tokens"] == settings["draft_tokens"]
    assert results["generation"]["sample"]["top_k"] == 0 and results["generation"]["sample"]["top_p"] == 1.0
    assert set(results["prompts"]) == set(PROMPTS)

    runs = results["runs"]
    assert len(runs) == len(MODES) * len(PROMPTS) * len(bench.DEFAULT_CONFIGS) * REPEATS
    assert len(results["warmup"]) == len(MODES) * len(bench.DEFAULT_CONFIGS)
    assert {(r["mode"], r["prompt"], r["config"], r["repeat"]) for r in runs} == {
        (m, p, c, k) for m in MODES for p in PROMPTS for c in bench.DEFAULT_CONFIGS for k in range(REPEATS)
    }
    for run in runs:
        assert 1 <= run["new_tokens"] <= 5 and len(run["output_ids"]) == run["new_tokens"]
        assert run["wall_s"] > 0 and run["target_forwards"] >= 1
        assert run["tau"] == pytest.approx(run["new_tokens"] / run["target_forwards"])
        if run["config"].startswith("hfspec"):
            # the forward hook and hfspec's own counter must agree, or tau is wrong for every config
            assert run["spec"]["target_forwards"] == run["target_forwards"]
        if run["config"] == "hf_plain":
            assert run["tau"] == 1.0

    assert len(results["summary"]) == len(MODES) * len(PROMPTS) * len(bench.DEFAULT_CONFIGS)
    assert len(results["geomean"]) == len(MODES) * len(bench.DEFAULT_CONFIGS)
    for row in results["summary"]:
        if row["config"] == "hf_plain":
            assert row["speedup_vs_plain"] == pytest.approx(1.0)
        assert row["speedup_vs_best_hf"] is not None


def test_greedy_outputs_identical(tiny_run):
    _, _, results = tiny_run
    assert results["all_greedy_identical"] is True
    for run in results["runs"]:
        assert run["identical"] is (True if run["mode"] == "greedy" else None), run


def test_markdown_section_written_and_replaced(tiny_run):
    out, md, results = tiny_run
    begin = "<!-- hfspec-bench:begin results/tiny.json -->"
    other_begin = "<!-- hfspec-bench:begin results/other.json -->"
    text = md.read_text()
    assert text.startswith("# hfspec benchmarks") and text.count(begin) == 1
    assert f"Command: `{results['command']}`" in text

    # re-render from the JSON: same single section, byte-identical (rendering is deterministic)
    assert cli.main(["render", str(out), "--markdown", str(md)]) == 0
    assert md.read_text() == text

    # a section for another results file is added next to it, not over it
    other = out.with_name("other.json")
    other.write_text(out.read_text().replace('"name": "tiny"', '"name": "other"'))
    assert cli.main(["render", str(other), "--markdown", str(md)]) == 0
    both = md.read_text()
    assert both.count(begin) == 1 and both.count(other_begin) == 1

    # re-running the benchmark into the same results file replaces its section in place
    threads = torch.get_num_threads()
    try:
        assert (
            _bench(
                out.with_name("other.json"),
                md,
                "--modes",
                "greedy",
                "--prompts",
                "edit",
                "--configs",
                "hfspec_lookup",
            )
            == 0
        )
    finally:
        torch.set_num_threads(threads)
    again = md.read_text()
    assert again.count(other_begin) == 1 and again.count(begin) == 1
    assert "--configs hfspec_lookup" in again
    assert again.index(begin) < again.index(other_begin)
    assert "[results/tiny.json](results/tiny.json)" in again  # link to the raw runs, relative to the markdown


# --------------------------------------------------------------------------- helpers
def test_schedule_rotates_so_no_config_always_runs_first():
    n = len(bench.DEFAULT_CONFIGS)
    settings = bench.BenchSettings(repeats=n, modes=MODES)
    prompts = [
        bench.Prompt(str(i), torch.tensor([[2, 3]]), kind="") for i in range(n)
    ]  # modes*prompts % n == 0
    plan = bench.schedule(settings, prompts)
    groups = [plan[i : i + n] for i in range(0, len(plan), n)]
    assert all(sorted(t.config for t in g) == sorted(bench.DEFAULT_CONFIGS) for g in groups)
    for mode in MODES:
        for index in range(n):
            firsts = [g[0].config for g in groups if g[0].group == (mode, index)]
            assert sorted(firsts) == sorted(bench.DEFAULT_CONFIGS)  # each config runs first once per (mode, prompt)


def test_mismatch_is_flagged_loudly(capsys):
    def run(config, ids):
        return bench.RunRecord("greedy", "p", config, 0, 0, 4, 1.0, len(ids), 4.0, 4, 1.0, ids)

    runs = [run("hf_plain", [5, 6, 7]), run("hfspec_draft", [5, 9, 7]), run("hfspec_lookup", [5, 6, 7])]
    bench.mark_identity(runs)
    assert [r.identical for r in runs] == [True, False, True]
    assert runs[1].first_mismatch == 1
    bench.warn_if_not_identical({"runs": [vars(r) for r in runs]})
    assert "WARNING" in capsys.readouterr().err


def test_count_new_tokens_stops_at_first_eos():
    assert harness.count_new_tokens(torch.tensor([4, 1, 1, 0]), [1]) == 2
    assert harness.count_new_tokens(torch.tensor([4, 5, 6]), [1, 2]) == 3


def test_assistant_length_restores_draft_config():
    draft = tiny_model()
    before = draft.generation_config.to_dict()
    with bench.assistant_length(draft, 7):
        assert draft.generation_config.num_assistant_tokens == 7
        assert draft.generation_config.num_assistant_tokens_schedule == "constant"
    assert draft.generation_config.to_dict() == before


def test_cli_errors_are_clear(capsys, tmp_path):
    with pytest.raises(SystemExit):
        cli.main(["bench", "--tiny", "--configs", "hf_plain,nope"])
    assert "choose from" in capsys.readouterr().err
    assert (
        cli.main(["bench", "--tiny", "--prompts", "nope", "--out", str(tmp_path / "x.json"), "--no-markdown"])
        == 2
    )
    assert "unknown prompt" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


# --------------------------------------------------------------------------- bench-batch
BATCH_REPEATS = 2
BATCH_TOKENS = 8


@pytest.fixture(scope="module")
def tiny_batch_run(tmp_path_factory):
    """`hfspec bench-batch --tiny` end to end: 3 prompts of different lengths, batch 1 vs batch 3."""
    tmp = tmp_path_factory.mktemp("bench_batch")
    out, markdown = tmp / "results" / "batch.json", tmp / "BENCHMARKS.md"
    threads = torch.get_num_threads()
    try:
        rc = cli.main(
            [
                "bench-batch",
                "--tiny",
                "--max-new-tokens",
                str(BATCH_TOKENS),
                "--repeats",
                str(BATCH_REPEATS),
                "--threads",
                "1",
                "--no-progress",
                "--out",
                str(out),
                "--markdown",
                str(markdown),
            ]
        )
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    return out, markdown, json.loads(out.read_text())


def test_batch_results_structure(tiny_batch_run):
    _, _, results = tiny_batch_run
    assert results["schema"] == bench_batch.SCHEMA
    assert results["command"].startswith("hfspec bench-batch --tiny")
    assert results["machine"]["torch_threads"] == 1
    assert tuple(results["settings"]["configs"]) == bench_batch.CONFIGS
    assert results["generation"]["do_sample"] is False
    lengths = [p["num_tokens"] for p in results["prompts"].values()]
    assert len(set(lengths)) == len(lengths) == 3  # different lengths: the batch is really padded
    assert results["batch"] == {
        "size": 3,
        "padding_side": "left",
        "padded_length": max(lengths),
        "pad_token_id": 0,
    }

    runs = results["runs"]
    assert len(results["warmup"]) == len(bench_batch.CONFIGS) * len(bench_batch.WAYS)
    assert sorted((r["config"], r["way"], r["repeat"]) for r in runs) == sorted(
        (c, w, k) for c in bench_batch.CONFIGS for w in bench_batch.WAYS for k in range(BATCH_REPEATS)
    )
    for run in runs:
        assert run["calls"] == (1 if run["way"] == "batched" else 3)
        assert set(run["rows"]) == set(results["prompts"])
        assert all(1 <= len(ids) <= BATCH_TOKENS for ids in run["rows"].values())
        assert run["new_tokens"] == sum(len(ids) for ids in run["rows"].values())
        assert run["wall_s"] > 0 and run["target_forwards"] >= 1
        if run["config"] == "hf_plain":
            assert run["spec"] is None
            lengths = [len(ids) for ids in run["rows"].values()]  # one forward per token, per call
            assert run["target_forwards"] == (max(lengths) if run["way"] == "batched" else sum(lengths))
        else:
            assert run["spec"]["target_forwards"] == run["target_forwards"]  # hook and SpecStats agree

    assert [row["config"] for row in results["summary"]] == list(bench_batch.CONFIGS)
    for row in results["summary"]:
        for way in bench_batch.WAYS:
            assert row[way]["runs"] == BATCH_REPEATS and row[way]["tokens_per_s"] > 0
        assert row["batched_over_sequential"] == pytest.approx(
            row["batched"]["tokens_per_s"] / row["sequential"]["tokens_per_s"]
        )
        spec = row["config"] != "hf_plain"
        assert (row["batched"]["tau"] is not None) is spec and (
            row["batched"]["acceptance_rate"] is not None
        ) is spec


def test_batch_identity_checks_all_pass(tiny_batch_run):
    _, _, results = tiny_batch_run
    assert results["all_identical"] is True
    assert results["checks"] == {"batched_equals_sequential": True, "equals_hf_plain": True, "mismatches": []}
    for row in results["summary"]:
        assert row["identical_across_batch"] is True and row["identical_to_plain"] is True
    for run in results["runs"]:
        assert all(run["same_as_plain"].values())
        if run["way"] == "batched":
            assert all(run["same_as_sequential"].values())
        else:
            assert run["same_as_sequential"] is None


def test_batch_markdown_section_and_render(tiny_batch_run):
    out, md, results = tiny_batch_run
    text = md.read_text()
    assert text.count("<!-- hfspec-bench:begin results/batch.json -->") == 1
    assert f"Command: `{results['command']}`" in text and "| hfspec_lookup | batch of 3 |" in text
    assert cli.main(["render", str(out), "--markdown", str(md)]) == 0
    assert md.read_text() == text  # re-rendering replaces the section with the same bytes


def _plain_outputs(workload: bench.Workload, max_new_tokens: int) -> list[list[int]]:
    outputs = []
    for prompt in workload.prompts:
        out = workload.target.generate(
            input_ids=prompt.input_ids,
            attention_mask=torch.ones_like(prompt.input_ids),
            **bench.generation_kwargs("greedy", bench.BenchSettings(), workload, max_new_tokens),
        )
        outputs.append(out[0, prompt.input_ids.shape[1] :].tolist())
    return outputs


def test_batch_rows_stopping_at_different_steps_stay_identical():
    """A stop token that ends each row at a different step: finished rows must not disturb the others."""
    settings = bench.BenchSettings(
        tiny=True, max_new_tokens=12, configs=bench_batch.CONFIGS, warmup_tokens=2, threads=1, progress=False
    )
    workload = bench.tiny_workload(settings)
    outputs = _plain_outputs(workload, settings.max_new_tokens)

    def stop_lengths(token: int) -> list[int]:
        return [o.index(token) + 1 if token in o else len(o) for o in outputs]

    token = next(t for o in outputs for t in o if len(set(stop_lengths(t))) == len(outputs))
    workload.eos_token_ids = [*workload.eos_token_ids, token]

    results = bench_batch.run_benchmark(settings, name="stops", command="test", workload=workload)
    assert results["all_identical"] is True, results["checks"]["mismatches"]
    for run in results["runs"]:
        assert [len(ids) for ids in run["rows"].values()] == stop_lengths(token)


def test_left_pad_matches_the_tokenizer_left_padding():
    prompts = [bench.Prompt(n, torch.tensor([ids]), kind="") for n, ids in (("a", [5, 6]), ("b", [7, 8, 9]))]
    expected = tiny_tokenizer().pad(
        {"input_ids": [[5, 6], [7, 8, 9]]}, padding_side="left", return_tensors="pt"
    )
    ids, mask = bench_batch.left_pad(prompts, pad_token_id=0)
    assert torch.equal(ids, expected["input_ids"]) and torch.equal(mask, expected["attention_mask"])


def test_batch_schedule_alternates_and_rotates():
    settings = bench.BenchSettings(repeats=6, configs=bench_batch.CONFIGS)
    plan = bench_batch.schedule(settings)
    groups = [plan[i : i + 6] for i in range(0, len(plan), 6)]
    assert all(
        sorted(t.config for t in g) == sorted(f"{c}/{w}" for c in bench_batch.CONFIGS for w in bench_batch.WAYS)
        for g in groups
    )
    assert len({g[0].config for g in groups}) == 6  # every (config, way) runs first once


def test_harness_identity_marks_each_run_against_its_reference():
    """One rule for every benchmark: same group and repetition; the reference against its repetition 0."""
    from dataclasses import dataclass

    @dataclass
    class Run:
        group: str
        config: str
        repeat: int
        output_ids: list
        identical: bool | None = None
        first_mismatch: int | None = None

    runs = [
        Run("a", "ref", 0, [1, 2, 3]),
        Run("a", "ref", 1, [1, 2, 4]),  # the reference is not deterministic
        Run("a", "x", 0, [1, 2, 3]),
        Run("a", "x", 1, [1, 2, 4]),  # equal to its own repetition's reference
        Run("b", "ref", 0, [5]),
        Run("b", "x", 0, [6, 7]),
        Run("b", "y", 0, [6]),  # not checked
    ]
    harness.mark_identity(runs, group=lambda r: r.group, reference=lambda r: None if r.config == "y" else "ref")
    assert [r.identical for r in runs] == [True, False, True, True, True, False, None]
    assert [r.first_mismatch for r in runs] == [None, 2, None, None, None, 0, None]


def test_bench_batch_rejects_hf_speculative_configs(capsys):
    with pytest.raises(SystemExit):
        cli.main(["bench-batch", "--tiny", "--configs", "hf_assisted"])
    assert "choose from" in capsys.readouterr().err


def test_split_prefill_reports_decode_rates(tmp_path):
    """--split-prefill times a 1-token call per (prompt, config) and reports decode rates and speedups."""
    out, markdown = tmp_path / "split.json", tmp_path / "BENCHMARKS.md"
    threads = torch.get_num_threads()
    try:
        rc = _bench(out, markdown, "--modes", "greedy", "--prompts", "code", "--configs", "hf_plain,hfspec_lookup",
                    "--split-prefill")
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    results = json.loads(out.read_text())
    runs = results["runs"]
    assert runs and all(r["first_token_s"] is not None and 0 < r["first_token_s"] < r["wall_s"] for r in runs)
    first = {r["config"]: r["first_token_s"] for r in runs}  # one prompt, one repetition
    for row in results["summary"]:
        expected = (row["new_tokens"] - 1) / (row["wall_s"] - first[row["config"]])
        assert row["decode_tokens_per_s"] == pytest.approx(expected)
    plain = next(g for g in results["geomean"] if g["config"] == "hf_plain")
    assert plain["decode_speedup_vs_plain"] == pytest.approx(1.0)
    assert "decode x hf_plain" in markdown.read_text()


# --------------------------------------------------------------------------- figures (hfspec render)
def test_figures_are_written_next_to_the_markdown_and_embedded(tiny_run):
    pytest.importorskip("matplotlib")
    out, md, results = tiny_run
    folder = md.parent / "benchmarks" / "figures"
    for name in ("speedup", "tau-vs-rate"):
        png = folder / f"tiny-{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"![tiny-{name}](benchmarks/figures/tiny-{name}.png)" in md.read_text()


def test_verify_curve_file_renders_its_figure_only(tmp_path):
    pytest.importorskip("matplotlib")
    curve = {
        "model": "target",
        "dtype": "float32",
        "prefix": 256,
        "rows": [{"q": q, "eager_s": 0.3 * q**0.5, "compiled_s": 0.17 * q**0.6} for q in (1, 2, 4, 8)],
    }
    path = tmp_path / "verify-curve-x.json"
    path.write_text(json.dumps(curve))
    md = tmp_path / "BENCHMARKS.md"
    assert cli.main(["render", str(path), "--markdown", str(md)]) == 0
    assert (tmp_path / "benchmarks" / "figures" / "verify-curve-x-verify-curve.png").is_file()
    assert not md.exists()  # its prose is hand-written; render only draws


def test_render_refuses_an_unknown_results_file(tmp_path, capsys):
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"schema": "something-else/1"}))
    assert cli.main(["render", str(path), "--markdown", str(tmp_path / "m.md")]) == 2
    assert "not an hfspec bench" in capsys.readouterr().err


def test_bound_keeps_measured_prefills_and_charges_graphs_their_weight_bytes():
    """benchmarks/bound.py: prompt prefills kept as measured, other eager draft forwards and graph calls
    charged one weight read each at the ceiling, compared with HF's walls of the same prompt."""
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).parents[1] / "benchmarks" / "bound.py"
    spec = importlib.util.spec_from_file_location("bound", path)
    bound = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bound)
    gbps = bound.TARGET_PARAMS * 4 / 1e9  # one verify = 1 s; one bf16 draft forward = DRAFT*2/TARGET*4 s
    draft_s = bound.DRAFT_PARAMS * 2 / (bound.TARGET_PARAMS * 4)
    profile = {"rows": [{"prompt": "p", "wall_s": 30.0, "steps": 3, "tau": 5.0, "forwards": {
        "target eager q=100": {"seconds": 4.0, "calls": 1},
        "draft eager q=100": {"seconds": 2.0, "calls": 1},
        "draft eager q=5": {"seconds": 0.5, "calls": 1},  # a catch-up: charged as one draft forward
        "draft graph q=1": {"seconds": 3.0, "calls": 10},
        "target graph q=8": {"seconds": 9.0, "calls": 3},
    }}]}
    bench = {"runs": [{"mode": "greedy", "prompt": "p", "config": c, "wall_s": w}
                      for c, w in (("hf_plain", 40.0), ("hf_assisted", 20.0), ("hf_prompt_lookup", 25.0))]
             + [{"mode": "sample", "prompt": "p", "config": "hf_assisted", "wall_s": 1.0}]}
    (row,) = bound.bound_rows(profile, bench, gbps)
    assert row["eager_prefills_s"] == 6.0 and row["draft_graph_calls"] == 11
    assert row["bound_wall_s"] == pytest.approx(6.0 + 3 * 1.0 + 11 * draft_s)
    assert row["best_hf_s"] == 20.0  # greedy runs only
    assert row["bound_x_plain"] == pytest.approx(40.0 / row["bound_wall_s"])
    assert bound.geomean([2.0, 8.0]) == pytest.approx(4.0)
