"""``hfspec bench-aligned``: what masking does to a constrained answer, and what alignment costs.

Each task is a question whose natural answer the grammar cuts (the capital of Australia in at most
six letters: the model wants "Canberra"). Every config draws the same number of samples of the
answer (T = 1, no top-k/p, so P is the model's own distribution): masked decoding (``grammar=spec``,
what every constrained decoder does), ASAp and the exact method, each also with a 0.5B draft. For
each: the answers, their mean log-likelihood under the unconstrained LM (log P(answer + EOS |
prompt)), the total-variation distance of the answer distribution to the exact method's (whose
samples are exactly from Q), and the cost: target forwards per returned sample (rejected attempts
included) and wall seconds per sample. Configs run in rotated order per task, in one process.
"""

from __future__ import annotations

import collections
import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

import torch

import hfspec
from hfspec.bench import environment, harness, markdown
from hfspec.stopping import stop_token_ids, until_stop

SCHEMA = "hfspec-bench-aligned/1"
CONFIGS = ("masked", "asap", "exact", "masked+draft", "asap+draft", "exact+draft")
DEFAULT_OUT = "aligned-qwen2.5-coder-1.5b_0.5b.json"
TASKS = {
    "capital": ("What is the capital of Australia? Answer with the city name only.", r"[A-Z][a-z]{1,5}",
                "at most 6 letters"),
    "planet": ("Which planet is known as the Red Planet? Answer with one word.", r"[A-Z][a-z]{1,3}",
               "at most 4 letters"),
}


@dataclass(frozen=True)
class AlignedBenchSettings:
    tiny: bool = False
    samples: int = 64  # per (task, config)
    batch: int = 16  # rows per generate() call (num_return_sequences)
    max_new_tokens: int = 8
    draft_tokens: int = 3
    threads: int = 2
    seed: int = 0
    configs: tuple[str, ...] = CONFIGS
    tasks: tuple[str, ...] = tuple(TASKS)
    progress: bool = True


@dataclass
class Task:
    name: str
    prompt_ids: torch.Tensor  # (1, T)
    spec: Any
    note: str


@dataclass
class Workload:
    target: Any
    draft: Any
    tokenizer: Any
    tasks: list[Task]
    names: dict[str, str] = field(default_factory=dict)


@dataclass
class ConfigRun:
    """One (task, config): every sample drawn, and what they cost."""

    task: str
    config: str
    answers: list[str]
    log_likelihood: list[float]  # log P(answer + EOS | prompt) under the unconstrained target, per sample
    wall_s: float
    target_forwards: int  # batched verify forwards
    row_forwards: int  # (row, forward) pairs, rejected attempts included
    attempts: int
    samples: int

    @property
    def mean_log_likelihood(self) -> float:
        return sum(self.log_likelihood) / max(len(self.log_likelihood), 1)


def load_workload(settings: AlignedBenchSettings) -> Workload:
    if settings.tiny:
        from hfspec.testing import perturbed_copy, tiny_json_tokenizer, tiny_model

        tok = tiny_json_tokenizer()
        target = tiny_model("llama", vocab_size=64, logit_scale=2.0, seed=21)
        prompt = torch.tensor([[3, 27, 21, 22, 28, 29, 27]])
        task = Task("toy", prompt, hfspec.Regex(r"x[ab]{1,2}zabz", tokenizer=tok), "14 token sequences")
        return Workload(target, perturbed_copy(target, 0.01), tok, [task], {"target": "tiny llama", "draft": "tiny"})
    from hfspec import models

    target, draft, tok = models.load_pair(progress=settings.progress)
    tasks = []
    for name in settings.tasks:
        question, regex, note = TASKS[name]
        text = tok.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                       add_generation_prompt=True)
        tasks.append(Task(name, tok(text, return_tensors="pt").input_ids, hfspec.Regex(regex, tokenizer=tok),
                          f"{question} / regex {regex} ({note})"))
    return Workload(target, draft, tok, tasks, {"target": models.TARGET, "draft": models.DRAFT})


def log_likelihood(model, prompt: torch.Tensor, answers: list[list[int]]) -> list[float]:
    """log P(answer | prompt) under the model (T = 1, no processors), one forward per answer."""
    out = []
    with torch.no_grad():
        for answer in answers:
            ids = torch.cat([prompt[0], torch.tensor(answer, dtype=prompt.dtype)])[None]
            logp = torch.log_softmax(model(input_ids=ids).logits[0, prompt.shape[1] - 1 : -1].double(), dim=-1)
            out.append(float(logp.gather(1, torch.tensor(answer)[:, None]).sum()))
    return out


def run_config(settings: AlignedBenchSettings, work: Workload, task: Task, config: str) -> ConfigRun:
    method, _, with_draft = config.partition("+")
    grammar = task.spec if method == "masked" else hfspec.GrammarAligned(task.spec, method=method, max_rounds=500)
    strategy = hfspec.DraftModel(work.draft, num_tokens=settings.draft_tokens) if with_draft else None
    stats = hfspec.SpecStats()
    stops = set(stop_token_ids(work.target.generation_config.eos_token_id, work.tokenizer))
    answers, ids = [], []
    attempts = 0
    start = time.perf_counter()
    done = 0
    while done < settings.samples:
        rows = min(settings.batch, settings.samples - done)
        out = work.target.generate(
            input_ids=task.prompt_ids, custom_generate=hfspec.generate, grammar=grammar, assistant_strategy=strategy,
            do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=settings.max_new_tokens,
            num_return_sequences=rows, speculation_stats=stats, on_incomplete="flag",
        )
        for row in out[:, task.prompt_ids.shape[1] :].tolist():
            answer = until_stop(row, stops)
            ids.append(row[: len(answer) + 1])  # with its stop token (scored too), when it has one
            answers.append(work.tokenizer.decode(answer))
        attempts += grammar.last_call.attempts if method != "masked" else rows
        done += rows
    wall = time.perf_counter() - start
    return ConfigRun(task.name, config, answers, log_likelihood(work.target, task.prompt_ids, ids), wall,
                     stats.target_forwards, stats.row_steps, attempts, done)


def total_variation(a: list[str], b: list[str]) -> float:
    ca, cb = collections.Counter(a), collections.Counter(b)
    return 0.5 * sum(abs(ca[k] / len(a) - cb[k] / len(b)) for k in set(ca) | set(cb))


def run_benchmark(settings: AlignedBenchSettings, *, name: str, command: str) -> dict[str, Any]:
    unknown = [c for c in settings.configs if c not in CONFIGS]
    if unknown:
        raise hfspec.ConfigurationError(f"bench-aligned configs {unknown} unknown; choose from {CONFIGS}")
    work = load_workload(settings)
    load = {"start": environment.load_average()}
    runs: list[ConfigRun] = []
    with harness.Progress(len(work.tasks) * len(settings.configs), "hfspec bench-aligned", settings.progress) as bar:
        for t, task in enumerate(work.tasks):
            order = settings.configs[t % len(settings.configs):] + settings.configs[: t % len(settings.configs)]
            for config in order:
                torch.manual_seed(settings.seed + t)
                runs.append(run_config(settings, work, task, config))
                bar.tick(f"{task.name} {config}")
    load["end"] = environment.load_average()
    machine = environment.machine_info(settings.threads)
    machine["load_average"] = load
    return {
        "schema": SCHEMA,
        "name": name,
        "command": command,
        "settings": dataclasses.asdict(settings),
        "machine": machine,
        "models": {"target": {"name": work.names["target"], "dtype": "float32"},
                   "draft": {"name": work.names["draft"], "dtype": "float32"}},
        "tasks": {task.name: task.note for task in work.tasks},
        "runs": [dataclasses.asdict(run) for run in runs],
    }


def summary(results: dict[str, Any]) -> list[dict[str, Any]]:
    runs = [ConfigRun(**r) for r in results["runs"]]
    exact = {r.task: r.answers for r in runs if r.config == "exact"}
    rows = []
    for r in runs:
        counts = collections.Counter(r.answers)
        rows.append({
            "task": r.task,
            "config": r.config,
            "samples": r.samples,
            "mean_log_likelihood": r.mean_log_likelihood,
            "top": ", ".join(f"{a!r} {n}" for a, n in counts.most_common(4)),
            "distinct": len(counts),
            "tv_to_exact": total_variation(r.answers, exact[r.task]) if r.task in exact else None,
            "acceptance": r.samples / max(r.attempts, 1),
            "forwards_per_sample": r.row_forwards / max(r.samples, 1),
            "seconds_per_sample": r.wall_s / max(r.samples, 1),
        })
    return rows


def print_report(results: dict[str, Any]) -> None:
    header, body = _table(results)
    markdown.print_table("grammar-aligned sampling", header, body, left=("task", "config", "top answers (count)"))


def _table(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = ["task", "config", "samples", "mean log P(answer)", "top answers (count)", "distinct",
              "TV to exact", "acceptance", "target fwd / sample", "s / sample"]
    body = [
        [s["task"], s["config"], str(s["samples"]), markdown.num(s["mean_log_likelihood"]), s["top"],
         str(s["distinct"]), markdown.num(s["tv_to_exact"]), markdown.num(s["acceptance"]),
         markdown.num(s["forwards_per_sample"], 1), markdown.num(s["seconds_per_sample"], 2)]
        for s in summary(results)
    ]
    return header, body


def render_section(results: dict[str, Any], key: str) -> str:
    header, body = _table(results)
    tasks = "\n".join(f"- `{name}`: {note}" for name, note in results["tasks"].items())
    return "\n".join([
        markdown.SECTION_BEGIN.format(key=key),
        "## Grammar-aligned sampling: masked vs ASAp vs exact (`hfspec bench-aligned`)",
        "",
        f"Command: `{results['command']}`. Results: `{key}`.",
        *environment.environment_lines(results),
        "",
        "Tasks (chat template, T = 1, no top-k/top-p; the draft proposes 3 tokens per step):",
        tasks,
        "",
        "Masked decoding (`grammar=spec`) renormalises the mask locally, so it starts the answer the model "
        "wants and then writes whatever still fits; the exact method's samples are exactly from "
        "Q(w) ∝ P(w)·1[w ∈ L], and ASAp approaches it as its trie learns. *mean log P* is the answer's "
        "log-likelihood under the unconstrained model; *TV to exact* compares answer distributions; "
        "*target fwd / sample* counts (row, target forward) pairs per returned sample, rejected attempts included.",
        "",
        markdown.table(header, body),
        markdown.SECTION_END.format(key=key),
        "",
    ])
