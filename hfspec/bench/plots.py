"""Figures of a results file, written next to the markdown that embeds them (``hfspec render``).

Why figures at all: a table of 30 speedups hides the pattern a bar chart shows at once (which
prompt a proposer wins on, and whether tokens per step or step cost explains it). Each figure is
a pure function of the results dict, so re-rendering an old results file redraws the same figure.
matplotlib is part of the ``[bench]`` extra; without it the markdown is written without figures.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Sequence
from typing import Any


def available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def is_verify_curve(results: dict[str, Any]) -> bool:
    """benchmarks/verify_curve.py's files: no schema field, rows of (q, eager_s, compiled_s)."""
    rows = results.get("rows")
    return isinstance(rows, list) and bool(rows) and {"q", "eager_s", "compiled_s"} <= set(rows[0])


def figures_for(results: dict[str, Any]) -> list[tuple[str, Callable[[dict[str, Any]], Any]]]:
    """(name, figure function) for every figure this kind of results file has."""
    if is_verify_curve(results):
        return [("verify-curve", verify_curve)]
    from hfspec.bench import batch, grammar, speed  # their SCHEMA names the results files they write

    return {
        speed.SCHEMA: [("speedup", speed_speedups), ("tau-vs-rate", speed_tau_vs_rate)],
        batch.SCHEMA: [("batch", batch_rates)],
        grammar.SCHEMA: [("speedup", grammar_speedups), ("tau-vs-rate", grammar_tau_vs_rate)],
    }.get(results.get("schema"), [])


def write(results: dict[str, Any], folder: str | pathlib.Path, stem: str) -> list[pathlib.Path]:
    """Save every figure of ``results`` as ``folder/stem-NAME.png``; returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, draw in figures_for(results):
        figure = draw(results)
        path = folder / f"{stem}-{name}.png"
        figure.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(figure)
        paths.append(path)
    return paths


# --------------------------------------------------------------------------- speed (hfspec bench)
def speed_speedups(results: dict[str, Any]):
    """Speedup over hf_plain per prompt and configuration, one panel per mode."""
    rows = [r for r in results["summary"] if r["config"] != "hf_plain"]
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    fig, axes = _panels(len(modes), width=max(6.0, 1.6 * len({r["prompt"] for r in rows}) + 2))
    for ax, mode in zip(axes, modes, strict=True):
        _grouped_bars(ax, [r for r in rows if r["mode"] == mode], "prompt", "speedup_vs_plain")
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_title(f"{mode}: speedup over plain HF generate")
        ax.set_ylabel("× hf_plain (tokens/s)")
    _title(fig, results)
    return fig


def speed_tau_vs_rate(results: dict[str, Any]):
    """Tokens per target forward against tokens per second: which configs win by τ, which by step cost."""
    return _scatter(results, results["summary"], label=lambda r: f"{r['config']} ({r['mode']})")


# --------------------------------------------------------------------------- batch (hfspec bench-batch)
def batch_rates(results: dict[str, Any]):
    """Aggregate tokens/s per config, one prompt at a time vs one batch."""
    fig, (ax,) = _panels(1, width=7.0)
    rows = [
        {"config": s["config"], "way": way, "tokens_per_s": s[way]["tokens_per_s"]}
        for s in results["summary"]
        for way in ("sequential", "batched")
    ]
    _grouped_bars(ax, rows, "config", "tokens_per_s", series="way")
    ax.set_ylabel("tokens/s (all rows)")
    ax.set_title(f"batch of {results['batch']['size']} vs one by one")
    _title(fig, results)
    return fig


# --------------------------------------------------------------------------- grammar (hfspec bench-grammar)
def grammar_speedups(results: dict[str, Any]):
    """Speedup over HF + xgrammar per schema and configuration (grammar configs only)."""
    rows = [
        r
        for r in results["summary"]["per_schema"]
        if r.get("speedup_vs_hf_xgrammar") is not None and r["config"] != "hf_xgrammar" and "grammar" in r["config"]
    ]
    fig, (ax,) = _panels(1, width=max(7.0, 1.5 * len({r["schema"] for r in rows}) + 2))
    _grouped_bars(ax, rows, "schema", "speedup_vs_hf_xgrammar")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_ylabel("× hf_xgrammar (tokens/s)")
    ax.set_title("grammar-constrained: speedup over HF + xgrammar")
    ax.tick_params(axis="x", labelrotation=20)
    _title(fig, results)
    return fig


def grammar_tau_vs_rate(results: dict[str, Any]):
    return _scatter(results, results["summary"]["per_schema"], label=lambda r: r["config"])


# --------------------------------------------------------------------------- verify cost curve
def verify_curve(results: dict[str, Any]):
    """Wall time of one forward of q new tokens, eager vs compiled, with the eager one-token step."""
    rows = sorted(results["rows"], key=lambda r: r["q"])
    qs = [r["q"] for r in rows]
    fig, (ax,) = _panels(1, width=6.5)
    ax.plot(qs, [1e3 * r["eager_s"] for r in rows], "o-", label="eager")
    ax.plot(qs, [1e3 * r["compiled_s"] for r in rows], "s-", label="compiled")
    ax.axhline(1e3 * rows[0]["eager_s"], color="gray", linestyle=":", label=f"eager q={qs[0]}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(qs, [str(q) for q in qs])
    ax.set_xlabel("q (tokens in one forward)")
    ax.set_ylabel("ms per forward")
    ax.set_title(f"verify cost, {results.get('model', '')} ({results.get('dtype', '')}, prefix {results.get('prefix')})")
    ax.legend()
    return fig


# --------------------------------------------------------------------------- drawing helpers
def _panels(n: int, width: float):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(n, 1, figsize=(width, 3.6 * n), squeeze=False)
    return fig, list(axes[:, 0])


def _grouped_bars(ax, rows: Sequence[dict[str, Any]], x: str, y: str, series: str = "config") -> None:
    """One group of bars per ``x`` value, one bar per ``series`` value; missing values are left out."""
    xs = list(dict.fromkeys(r[x] for r in rows))
    names = list(dict.fromkeys(r[series] for r in rows))
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        values = {r[x]: r[y] for r in rows if r[series] == name and r[y] is not None}
        positions = [j + (i - (len(names) - 1) / 2) * width for j, v in enumerate(xs) if v in values]
        ax.bar(positions, [values[v] for v in xs if v in values], width=width, label=name)
    ax.set_xticks(range(len(xs)), xs)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))


def _scatter(results: dict[str, Any], rows: Sequence[dict[str, Any]], label: Callable[[dict[str, Any]], str]):
    fig, (ax,) = _panels(1, width=6.5)
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row.get("tau") is not None and row.get("tokens_per_s") is not None:
            groups.setdefault(label(row), []).append(row)
    for name, group in groups.items():
        ax.scatter([r["tau"] for r in group], [r["tokens_per_s"] for r in group], label=name, s=28)
    ax.set_xlabel("τ (new tokens per target forward)")
    ax.set_ylabel("tokens/s")
    ax.set_title("tokens per step vs speed (one point per prompt or schema)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _title(fig, results)
    return fig


def _title(fig, results: dict[str, Any]) -> None:
    machine = results.get("machine", {})
    fig.suptitle(f"{results.get('name', '')} — {machine.get('date', '')}", fontsize=9)
