"""`hfspec bench-aligned --tiny` end to end: every config's samples, costs, the markdown section and render."""

from __future__ import annotations

import json

import pytest

from hfspec.bench import aligned, cli


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("aligned")
    out, md = folder / "aligned.json", folder / "BENCHMARKS.md"
    code = cli.main(["bench-aligned", "--tiny", "--samples", "24", "--batch", "12", "--out", str(out),
                     "--markdown", str(md), "--no-progress"])
    assert code == 0
    return json.loads(out.read_text()), md


def test_every_config_returns_its_samples_and_costs(tiny):
    results, _ = tiny
    assert results["schema"] == aligned.SCHEMA
    rows = aligned.summary(results)
    assert [r["config"] for r in rows] == list(aligned.CONFIGS)
    for row in rows:
        assert row["samples"] == 24 and row["forwards_per_sample"] > 0 and 0 < row["acceptance"] <= 1
    exact = next(r for r in rows if r["config"] == "exact")
    assert exact["tv_to_exact"] == 0.0
    for run in results["runs"]:  # every answer is a sentence of the toy regex
        assert all(len(a) >= 6 and a.startswith("x") and a.endswith("zabz") for a in run["answers"])


def test_markdown_section_and_render(tiny, tmp_path):
    results, md = tiny
    text = md.read_text()
    assert "Grammar-aligned sampling" in text and "| toy | exact |" in text
    path = tmp_path / "again.json"
    path.write_text(json.dumps(results))
    assert cli.main(["render", str(path), "--markdown", str(tmp_path / "R.md")]) == 0
    assert "| toy | asap+draft |" in (tmp_path / "R.md").read_text()


def test_unknown_config_is_refused():
    with pytest.raises(SystemExit):
        cli.main(["bench-aligned", "--tiny", "--configs", "nope"])
