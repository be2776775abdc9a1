"""Where a benchmark's numbers came from: machine, versions, load and checkout.

Recorded in every results file because timings on a shared 2-core machine mean little without
the load next to them (docs/lowering.md), and a number without its commit cannot be reproduced.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import pathlib
import platform
import subprocess
from typing import Any

import torch
import transformers

import hfspec


def load_average() -> list[float] | None:
    """1/5/15-minute load: a shared machine's contention, recorded next to the timings it distorts."""
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def machine_info(threads: int) -> dict[str, Any]:
    """Versions, CPU, threads, date and the git revision of the current directory's checkout (if any)."""
    return {
        "cpu_count": os.cpu_count(),
        "cpus_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_model": cpu_model(),
        "torch_threads": torch.get_num_threads(),
        "threads_requested": threads,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "hfspec": hfspec.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git": git_revision(),
    }


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def git_revision(cwd: str | os.PathLike | None = None) -> str | None:
    """Commit of the checkout the command runs in (+ '-dirty' with local changes); None outside one."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=cwd, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def environment_lines(results: dict[str, Any]) -> list[str]:
    """Markdown bullets for a results file's machine and models: shared by every benchmark section."""
    m, models = results["machine"], results["models"]
    draft = models.get("draft")
    return [
        f"- Date {m['date']}, hfspec {m['hfspec']} (git {m['git'] or 'unknown'}), torch {m['torch']}, "
        f"transformers {m['transformers']}, Python {m['python']}",
        f"- CPU: {m['cpu_model']}, {m['cpus_available']} cores available, torch threads {m['torch_threads']}, "
        f"load average (1/5/15 min) {load_text(m.get('load_average'))}",
        f"- Target {models['target']['name']} ({models['target']['dtype']}), "
        + (f"draft {draft['name']} ({draft['dtype']})" if draft else "no draft loaded"),
    ]


def load_text(load: dict[str, Any] | None) -> str:
    load = load or {}
    return ", ".join(f"{k} {'/'.join(map(str, v))}" for k, v in load.items() if v) or "unknown"
