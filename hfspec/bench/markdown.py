"""Results as markdown: one section per results file, replaced in place when re-rendered.

A section is fenced by HTML comments keyed by the results file's path, so ``hfspec render`` can
rewrite one benchmark's tables in BENCHMARKS.md without touching the prose around them.
"""

from __future__ import annotations

import contextlib
import math
import os
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

SECTION_BEGIN = "<!-- hfspec-bench:begin {key} -->"
SECTION_END = "<!-- hfspec-bench:end {key} -->"
INTRO = """# hfspec benchmarks

Produced by `hfspec bench` ([hfspec/bench/](hfspec/bench/)). Method: one process; a warm-up
run of every configuration first; then every configuration on the same prompts, alternating, with
the order rotated per repetition; medians across repetitions. tau = new tokens / target forward
calls (counted with a forward hook, prefill included; plain decoding gives ~1). Every greedy output
is checked token for token against plain `generate` on the same prompt. Sampling uses
temperature 0.7 with top-k/top-p off and a fixed seed per (prompt, repetition).

To reproduce a section: `pip install -e ".[bench]"` and run the command it shows from the repository
root (prompts: [hfspec/bench/data/prompts.json](hfspec/bench/data/prompts.json); every run: the linked
JSON). To re-render a section and its figures from its JSON: `hfspec render benchmarks/results/NAME.json`.
"""


def section_key(results_path: str | os.PathLike, markdown_path: str | os.PathLike) -> str:
    """The results file's path relative to the markdown file (absolute if elsewhere): one section per file."""
    results_path = pathlib.Path(results_path).resolve()
    with contextlib.suppress(ValueError):
        return results_path.relative_to(pathlib.Path(markdown_path).resolve().parent).as_posix()
    return results_path.as_posix()


def update(markdown_path: str | os.PathLike, key: str, section: str) -> pathlib.Path:
    """Create the file with the intro if needed; replace this key's section or append it."""
    path = pathlib.Path(markdown_path)
    text = path.read_text() if path.exists() else INTRO
    begin, end = SECTION_BEGIN.format(key=key), SECTION_END.format(key=key)
    start = text.find(begin)
    if start >= 0 and (stop := text.find(end, start)) >= 0:
        text = text[:start] + section.rstrip("\n") + text[stop + len(end) :]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text.rstrip("\n") + "\n")
    return path


def with_figures(section: str, key: str, images: Sequence[str]) -> str:
    """The section with its figures (paths relative to the markdown file) just before its end marker."""
    if not images:
        return section
    end = SECTION_END.format(key=key)
    block = "\n".join(f"![{pathlib.PurePosixPath(i).stem}]({i})" for i in images)
    return section.replace(end, block + "\n" + end)


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(out)


def num(value: float | None, digits: int = 2) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def times(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}x"


def yes_no(value: bool | None) -> str:
    return "–" if value is None else ("yes" if value else "**NO**")


def inline(value: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in value.items() if k != "class")


def print_table(
    title: str,
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    left: Sequence[str] = (),
    bold: Sequence[bool] = (),
    file=None,
) -> None:
    """Rich when installed (the [bench] extra), else the markdown table: the console never needs rich."""
    file = file or sys.stdout
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(table(header, rows), file=file)
        return
    out = Table(title=title)
    for col in header:
        is_label = col in left  # labels never wrap or truncate; the numbers' headers may wrap
        out.add_column(col, justify="left" if is_label else "right", no_wrap=is_label, min_width=None)
    for i, row in enumerate(rows):
        out.add_row(*row, style="bold" if i < len(bold) and bold[i] else None)
    from rich.console import Console

    Console(file=file, width=max(120, Console(file=file).width)).print(out)
