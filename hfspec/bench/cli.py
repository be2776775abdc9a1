"""The ``hfspec`` command.

    hfspec bench [--tiny] [--max-new-tokens 64] [--repeats 1] [--modes greedy,sample] [--configs ...]
                 [--prompts code,json,edit] [--threads N] [--out benchmarks/results/NAME.json] [--no-markdown]
    hfspec bench-batch [--tiny] [--max-new-tokens 64] [--repeats 1] [--configs hf_plain,hfspec_draft,hfspec_lookup]
                 [--prompts code,json,edit] [--threads N] [--out benchmarks/results/NAME.json] [--no-markdown]
    hfspec bench-grammar [--tiny] [--schemas 6] [--configs hf_xgrammar,hfspec_grammar_draft,...] [--repeats 1]
                 [--max-new-tokens 192] [--data DIR] [--out benchmarks/results/NAME.json] [--no-markdown]
    hfspec demo [--tiny] [--prompt TEXT] [--max-new-tokens 64]
    hfspec render benchmarks/results/NAME.json [--markdown BENCHMARKS.md]
    hfspec conformance [--data DIR] [--out-json PATH] [--out-md PATH] [--limit N]

Model loading and benchmarking live in the ``hfspec.bench`` modules; this module only parses arguments,
reports errors plainly (no tracebacks for configuration mistakes), writes files and prints. Every
path is relative to the current directory (results under ``benchmarks/results/``, the markdown in
``BENCHMARKS.md``): the installed package reads nothing from a source checkout.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import shlex
import sys
from collections.abc import Callable, Sequence

import torch

from hfspec.bench import aligned as bench_aligned
from hfspec.bench import batch as bench_batch
from hfspec.bench import grammar as bench_grammar
from hfspec.bench import harness, markdown
from hfspec.bench import speed as bench
from hfspec.exceptions import HfspecError

RESULTS_DIR = pathlib.Path("benchmarks") / "results"
DEFAULT_MARKDOWN = pathlib.Path("BENCHMARKS.md")
# every results file's schema -> the module that renders it (hfspec render)
BENCHMARKS = {
    bench.SCHEMA: bench,
    bench_batch.SCHEMA: bench_batch,
    bench_grammar.SCHEMA: bench_grammar,
    bench_aligned.SCHEMA: bench_aligned,
}


# --------------------------------------------------------------------------- argument types
def comma_list(choices: Sequence[str] | None = None) -> Callable[[str], tuple[str, ...]]:
    """argparse type for "a,b,c", checked against ``choices`` when given."""

    def parse(text: str) -> tuple[str, ...]:
        items = tuple(dict.fromkeys(x.strip() for x in text.split(",") if x.strip()))
        if not items:
            raise argparse.ArgumentTypeError("expected a comma-separated list, got nothing")
        unknown = [x for x in items if choices is not None and x not in choices]
        if unknown:
            raise argparse.ArgumentTypeError(
                f"unknown {', '.join(unknown)}; choose from {', '.join(choices)}"
            )
        return items

    return parse


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a value in [0, 1), got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {value}")
    return value


def tri_state(text: str) -> bool | None:
    """auto -> None (follow the call), true/false otherwise."""
    table = {"auto": None, "true": True, "yes": True, "false": False, "no": False}
    if text.lower() not in table:
        raise argparse.ArgumentTypeError(f"expected auto, true or false, got {text!r}")
    return table[text.lower()]


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


# --------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hfspec", description="hfspec: lossless speculative decoding for HF generate()."
    )
    sub = parser.add_subparsers(
        dest="command", required=True,
        metavar="{bench,bench-batch,bench-grammar,bench-aligned,demo,render,conformance}",
    )

    b = sub.add_parser(
        "bench",
        help="benchmark hfspec vs plain HF and HF's own speculative decoding",
        description="Benchmark hfspec against hf_plain, hf_assisted and hf_prompt_lookup in one process.",
    )
    _add_model_args(b)
    _add_run_args(b, repeats_per="(mode, prompt, config)", configs=bench.CONFIGS, default=bench.DEFAULT_CONFIGS)
    b.add_argument(
        "--split-prefill",
        action="store_true",
        help="also time a 1-token call per prompt and config, and report decode rates without the prefill",
    )
    b.add_argument(
        "--modes", type=comma_list(bench.MODES), default=bench.MODES, help="greedy,sample (default both)"
    )
    b.add_argument(
        "--temperature", type=positive_float, default=0.7, help="sampling temperature (top-k/top-p off)"
    )
    b.add_argument("--seed", type=int, default=0, help="base seed; each (prompt, repetition) gets its own")
    b.set_defaults(func=cmd_bench)

    bb = sub.add_parser(
        "bench-batch",
        help="the cost of batching: the prompts one at a time vs as one left-padded batch (greedy)",
        description="Run hf_plain, hfspec_draft and hfspec_lookup on the prompts one at a time (batch 1) "
        "and as one left-padded batch, in one process; report aggregate tok/s, the batched/batch-1 ratio, "
        "tau and acceptance, and check that batched rows equal the batch-1 outputs token for token.",
    )
    _add_model_args(bb)
    _add_run_args(bb, repeats_per="(config, way)", configs=bench_batch.CONFIGS)
    bb.set_defaults(func=cmd_bench_batch)

    bg = sub.add_parser(
        "bench-grammar",
        help="grammar-constrained decoding: HF + xgrammar's processor vs hfspec, every proposer (greedy)",
        description="Run JSON-Schema-constrained generation on JSONSchemaBench schemas with hf_xgrammar "
        "and hfspec (no strategy, DraftModel, PromptLookup, JumpForward, JumpForward(DraftModel)) plus "
        "unconstrained references, in one process; report tok/s, tau, target forwards, mask time, validity, "
        "and check that every grammar output equals hf_xgrammar's token for token.",
    )
    _add_model_args(bg)
    _add_grammar_args(bg)

    ba = sub.add_parser(
        "bench-aligned",
        help="grammar-aligned sampling: masked vs ASAp vs exact, with and without a draft (answers, cost)",
        description="Draw constrained answers whose natural phrasing the grammar cuts, with masked decoding, "
        "GrammarAligned ASAp and exact (each also with the draft model), in one process; report the answers, "
        "their log-likelihood under the unconstrained model, TV to the exact method's, acceptance, target "
        "forwards and seconds per sample.",
    )
    ba.add_argument("--tiny", action="store_true", help="tiny in-process models and a toy regex (seconds; CI)")
    ba.add_argument("--samples", type=positive_int, default=64, help="samples per (task, config) (default 64)")
    ba.add_argument("--batch", type=positive_int, default=16, help="rows per generate() call (default 16)")
    ba.add_argument("--max-new-tokens", type=positive_int, default=8)
    ba.add_argument("--threads", type=positive_int, default=available_cores(), help="torch threads")
    ba.add_argument("--seed", type=int, default=0)
    ba.add_argument("--configs", type=comma_list(bench_aligned.CONFIGS), default=bench_aligned.CONFIGS)
    ba.add_argument("--tasks", type=comma_list(tuple(bench_aligned.TASKS)), default=tuple(bench_aligned.TASKS))
    ba.add_argument("--out", default=None, help=f"results JSON (default {RESULTS_DIR / bench_aligned.DEFAULT_OUT})")
    ba.add_argument("--markdown", default=None, help=f"markdown to update (default {DEFAULT_MARKDOWN}; none for --tiny)")
    ba.add_argument("--no-markdown", action="store_true", help="do not touch the markdown file")
    ba.add_argument("--no-progress", action="store_true", help="no progress bar")
    ba.set_defaults(func=cmd_bench_aligned)

    d = sub.add_parser(
        "demo",
        help="one prompt: plain HF vs hfspec DraftModel and PromptLookup",
        description="Generate one greedy answer with plain HF, hfspec DraftModel and hfspec PromptLookup.",
    )
    _add_model_args(d)
    d.add_argument(
        "--prompt", default=None, help="user message (default: the copy-heavy edit benchmark prompt)"
    )
    d.set_defaults(func=cmd_demo)

    r = sub.add_parser(
        "render",
        help="(re)write a results file's section of BENCHMARKS.md and its figures (benchmarks/figures/*.png)",
    )
    r.add_argument("results", help="results JSON written by hfspec bench, bench-batch or bench-grammar")
    r.add_argument(
        "--markdown", default=str(DEFAULT_MARKDOWN), help="markdown file to update (default BENCHMARKS.md)"
    )
    r.set_defaults(func=cmd_render)

    c = sub.add_parser(
        "conformance",
        help="token-level JSON Schema conformance on JSONSchemaBench (no model weights)",
        description="Compile every JSONSchemaBench schema for the Qwen2.5-Coder tokenizer and feed its valid "
        "(compact and indented) and invalid instances to xgrammar matchers token by token; write the JSON "
        "results and a markdown report.",
    )
    c.add_argument(
        "--data",
        default=None,
        help="JSONSchemaBench folder (default $HFSPEC_JSONSCHEMABENCH, else tests/data/jsonschemabench "
        "of the source checkout in the current directory)",
    )
    c.add_argument(
        "--out-json",
        default=str(RESULTS_DIR / "conformance.json"),
        help="results JSON (default benchmarks/results/conformance.json)",
    )
    c.add_argument(
        "--out-md",
        default=str(pathlib.Path("docs") / "conformance.md"),
        help="markdown report (default docs/conformance.md)",
    )
    c.add_argument("--limit", type=positive_int, default=None, help="only the first N schema files (sorted)")
    c.add_argument("--no-progress", action="store_true", help="no progress bar")
    c.set_defaults(func=cmd_conformance)
    return parser


def _add_model_args(p: argparse.ArgumentParser) -> None:
    """Options shared by bench and demo: which models, how long, and the strategies' constructor kwargs."""
    p.add_argument(
        "--tiny", action="store_true", help="tiny random models and token-id prompts (seconds, no weights)"
    )
    p.add_argument("--max-new-tokens", type=positive_int, default=64)
    p.add_argument(
        "--threads",
        type=positive_int,
        default=available_cores(),
        help=f"torch threads (default: all {available_cores()} available cores)",
    )
    p.add_argument(
        "--draft-tokens",
        type=positive_int,
        default=7,
        help="DraftModel(num_tokens) and HF num_assistant_tokens (default 7)",
    )
    p.add_argument(
        "--confidence-threshold",
        type=probability,
        default=0.0,
        help="DraftModel(confidence_threshold) (default 0 = off; HF's own threshold stays at its default)",
    )
    p.add_argument(
        "--draft-do-sample",
        type=tri_state,
        default=None,
        metavar="{auto,true,false}",
        help="DraftModel(do_sample): auto follows the call (default)",
    )
    p.add_argument(
        "--draft-vocab",
        type=positive_int,
        default=None,
        help="DraftModel(draft_vocab=N): draft from the first N token ids only (pruned draft head; default: full head)",
    )
    p.add_argument(
        "--draft-dtype",
        choices=("float32", "bfloat16"),
        default="float32",
        help="the draft model's dtype, for every draft config, HF's assisted decoding included (default float32; "
        "it changes only the draft's q, which acceptance uses, never what the target says)",
    )
    p.add_argument(
        "--lookup-tokens",
        type=positive_int,
        default=7,
        help="PromptLookup(num_tokens) and HF prompt_lookup_num_tokens (default 7)",
    )
    p.add_argument(
        "--lookup-max-ngram", type=positive_int, default=3, help="PromptLookup(max_ngram) (default 3)"
    )
    p.add_argument(
        "--lookup-min-ngram", type=positive_int, default=2, help="PromptLookup(min_ngram) (default 2)"
    )


def _add_run_args(
    p: argparse.ArgumentParser, *, repeats_per: str, configs: Sequence[str], default: Sequence[str] | None = None
) -> None:
    """Options shared by bench and bench-batch: what to repeat, on which prompts, where results go."""
    p.add_argument("--repeats", type=positive_int, default=1, help=f"timed repetitions per {repeats_per}")
    p.add_argument(
        "--configs",
        type=comma_list(configs),
        default=tuple(default if default is not None else configs),
        help=f"subset of {','.join(configs)} (hf_plain is always added: it is the reference)",
    )
    p.add_argument(
        "--prompts", type=comma_list(), default=None, help="prompt names, e.g. code,json,edit (default all)"
    )
    p.add_argument("--prompts-file", default=None, help="prompts JSON (default: the prompts packaged with hfspec)")
    p.add_argument("--warmup-tokens", type=positive_int, default=8, help="max_new_tokens of the warm-up runs")
    p.add_argument(
        "--out", default=None, help="results JSON (default benchmarks/results/<date>-<models>.json)"
    )
    p.add_argument(
        "--markdown",
        default=None,
        help="markdown file to update (default BENCHMARKS.md; with --tiny only when given: tiny numbers mean nothing)",
    )
    p.add_argument("--no-markdown", action="store_true", help="do not touch the markdown file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def settings_from_args(args: argparse.Namespace) -> bench.BenchSettings:
    if args.lookup_min_ngram > args.lookup_max_ngram:
        raise HfspecError(
            f"--lookup-min-ngram ({args.lookup_min_ngram}) exceeds --lookup-max-ngram ({args.lookup_max_ngram})"
        )
    configs = getattr(args, "configs", bench.CONFIGS)
    if "hf_plain" not in configs:
        configs = ("hf_plain", *configs)
    return bench.BenchSettings(
        tiny=args.tiny,
        max_new_tokens=args.max_new_tokens,
        repeats=getattr(args, "repeats", 1),
        modes=getattr(args, "modes", ("greedy",)),
        configs=configs,
        prompts=getattr(args, "prompts", None),
        prompts_file=getattr(args, "prompts_file", None),
        temperature=getattr(args, "temperature", 0.7),
        seed=getattr(args, "seed", 0),
        warmup_tokens=min(getattr(args, "warmup_tokens", 4), args.max_new_tokens),
        threads=args.threads,
        draft_tokens=args.draft_tokens,
        draft_do_sample=args.draft_do_sample,
        confidence_threshold=args.confidence_threshold,
        draft_vocab=args.draft_vocab,
        draft_dtype=args.draft_dtype,
        lookup_tokens=args.lookup_tokens,
        lookup_max_ngram=args.lookup_max_ngram,
        lookup_min_ngram=args.lookup_min_ngram,
        progress=not getattr(args, "no_progress", False),
        split_prefill=getattr(args, "split_prefill", False),
    )


def _add_grammar_args(p: argparse.ArgumentParser) -> None:
    """bench-grammar's own options (cli adds the model options shared with bench)."""
    p.set_defaults(max_new_tokens=192)
    p.add_argument("--schemas", type=positive_int, default=6, help="number of JSON Schemas (default 6)")
    p.add_argument(
        "--configs",
        type=comma_list(bench_grammar.CONFIGS),
        default=bench_grammar.CONFIGS,
        help=f"subset of {','.join(bench_grammar.CONFIGS)} ({bench_grammar.BASELINE} is always added: it is the reference)",
    )
    p.add_argument("--repeats", type=positive_int, default=1, help="timed repetitions per (schema, config)")
    p.add_argument("--warmup-tokens", type=positive_int, default=8, help="max_new_tokens of the warm-up runs")
    p.add_argument(
        "--data",
        default=None,
        help="JSONSchemaBench folder (default $HFSPEC_JSONSCHEMABENCH, else tests/data/jsonschemabench under the current directory)",
    )
    p.add_argument(
        "--max-schema-chars", type=positive_int, default=bench_grammar.MAX_SCHEMA_CHARS, help="compact schema size limit"
    )
    p.add_argument(
        "--max-instance-chars",
        type=positive_int,
        default=bench_grammar.MAX_INSTANCE_CHARS,
        help="record (instance) size limit",
    )
    p.add_argument(
        "--out", default=None, help=f"results JSON (default {RESULTS_DIR / bench_grammar.DEFAULT_OUT})"
    )
    p.add_argument(
        "--markdown",
        default=None,
        help="markdown file to update (default BENCHMARKS.md; with --tiny only when given)",
    )
    p.add_argument("--no-markdown", action="store_true", help="do not touch the markdown file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_bench_grammar)


def grammar_settings_from_args(args: argparse.Namespace) -> bench_grammar.GrammarBenchSettings:
    if args.lookup_min_ngram > args.lookup_max_ngram:
        raise HfspecError(
            f"--lookup-min-ngram ({args.lookup_min_ngram}) exceeds "
            f"--lookup-max-ngram ({args.lookup_max_ngram})"
        )
    configs = args.configs if bench_grammar.BASELINE in args.configs else (bench_grammar.BASELINE, *args.configs)
    return bench_grammar.GrammarBenchSettings(
        tiny=args.tiny,
        max_new_tokens=args.max_new_tokens,
        repeats=args.repeats,
        configs=tuple(c for c in bench_grammar.CONFIGS if c in configs),
        schemas=args.schemas,
        data_dir=args.data,
        max_schema_chars=args.max_schema_chars,
        max_instance_chars=args.max_instance_chars,
        warmup_tokens=min(args.warmup_tokens, args.max_new_tokens),
        threads=args.threads,
        draft_tokens=args.draft_tokens,
        draft_do_sample=args.draft_do_sample,
        confidence_threshold=args.confidence_threshold,
        lookup_tokens=args.lookup_tokens,
        lookup_max_ngram=args.lookup_max_ngram,
        lookup_min_ngram=args.lookup_min_ngram,
        progress=not args.no_progress,
    )


def cmd_bench_grammar(args: argparse.Namespace, command: str) -> int:
    """``hfspec bench-grammar``: run, write the JSON, print, update the markdown (as bench does)."""
    settings = grammar_settings_from_args(args)
    torch.set_num_threads(settings.threads)
    return publish(bench_grammar, settings, results_path(args, settings.tiny, "grammar", bench_grammar), args, command)


def cmd_bench_aligned(args: argparse.Namespace, command: str) -> int:
    """``hfspec bench-aligned``: run, write the JSON, print, update the markdown (as bench does)."""
    settings = bench_aligned.AlignedBenchSettings(
        tiny=args.tiny, samples=args.samples, batch=args.batch, max_new_tokens=args.max_new_tokens,
        threads=args.threads, seed=args.seed, configs=args.configs, tasks=args.tasks, progress=not args.no_progress,
    )
    torch.set_num_threads(settings.threads)
    return publish(bench_aligned, settings, results_path(args, settings.tiny, "aligned", bench_aligned), args, command)


def results_path(args: argparse.Namespace, tiny: bool, name: str, kind) -> pathlib.Path:
    """--out if given; a time-stamped file for --tiny runs; else the benchmark's committed results file."""
    if args.out:
        return pathlib.Path(args.out)
    if tiny:
        return RESULTS_DIR / f"{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}-{name}-tiny.json"
    return RESULTS_DIR / kind.DEFAULT_OUT


# --------------------------------------------------------------------------- commands
def cmd_bench(args: argparse.Namespace, command: str) -> int:
    return _run_and_publish(args, command, bench, prefix="")


def cmd_bench_batch(args: argparse.Namespace, command: str) -> int:
    return _run_and_publish(args, command, bench_batch, prefix="batch-")


def _run_and_publish(args: argparse.Namespace, command: str, kind, *, prefix: str) -> int:
    """Run bench or bench-batch: ``kind`` provides run_benchmark, print_report and render_section."""
    settings = settings_from_args(args)
    torch.set_num_threads(settings.threads)
    out = pathlib.Path(args.out) if args.out else default_results_path(settings, prefix)
    return publish(kind, settings, out, args, command)


def publish(kind, settings, out: pathlib.Path, args: argparse.Namespace, command: str) -> int:
    """Run, write the JSON, print the report, update the markdown (not for --tiny unless asked)."""
    if out.suffix != ".json":
        raise HfspecError(f"--out must name a .json file, got {out}")
    results = kind.run_benchmark(settings, name=out.stem, command=command)
    harness.write_json(results, out)
    kind.print_report(results)
    print(f"results: {out}")
    target = args.markdown or (None if settings.tiny else str(DEFAULT_MARKDOWN))
    if target and not args.no_markdown:
        write_section(kind, results, out, target)
    return 0


def figures_folder(markdown_path: str | os.PathLike) -> pathlib.Path:
    """Figures live next to the markdown that embeds them, under benchmarks/figures/."""
    return pathlib.Path(markdown_path).parent / "benchmarks" / "figures"


def write_figures(results: dict, results_path: pathlib.Path, markdown_path: str | os.PathLike) -> list[str]:
    """PNG figures of a results file (when matplotlib is installed); their paths relative to the markdown."""
    from hfspec.bench import plots

    if not plots.figures_for(results):
        return []
    if not plots.available():
        print("figures: skipped (matplotlib is not installed; pip install \"hfspec[bench]\")", file=sys.stderr)
        return []
    paths = plots.write(results, figures_folder(markdown_path), results_path.stem)
    for path in paths:
        print(f"figure: {path}")
    return [markdown.section_key(path, markdown_path) for path in paths]  # relative to the markdown's folder


def write_section(kind, results: dict, results_path: pathlib.Path, markdown_path: str | os.PathLike) -> None:
    """(Re)write the results file's markdown section, with its figures embedded."""
    key = markdown.section_key(results_path, markdown_path)
    images = write_figures(results, results_path, markdown_path)
    section = markdown.with_figures(kind.render_section(results, key), key, images)
    print(f"markdown: {markdown.update(markdown_path, key, section)}")


def default_results_path(settings: bench.BenchSettings, prefix: str = "") -> pathlib.Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    models = "tiny" if settings.tiny else "qwen2.5-coder-1.5b-0.5b"
    return RESULTS_DIR / f"{stamp}-{prefix}{models}.json"


def cmd_demo(args: argparse.Namespace, command: str) -> int:
    settings = settings_from_args(args)
    torch.set_num_threads(settings.threads)
    demo = bench.run_demo(settings, args.prompt)
    print(f"prompt:\n{demo['prompt']}\n")
    for run in demo["runs"]:
        print(
            f"=== {run['config']}: {run['new_tokens']} tokens in {run['wall_s']:.2f} s = "
            f"{run['tokens_per_s']:.2f} tok/s, tau {run['tau']:.2f}, identical to hf_plain: {run['identical']}"
        )
        print(run["text"] + "\n")
    if any(run["identical"] is False for run in demo["runs"]):
        print("WARNING: a greedy hfspec output differs from plain HF generate.", file=sys.stderr)
    return 0


def cmd_render(args: argparse.Namespace, command: str) -> int:
    path = pathlib.Path(args.results)
    if not path.is_file():
        raise HfspecError(f"results file {path} not found")
    results = json.loads(path.read_text())
    from hfspec.bench import plots

    if plots.is_verify_curve(results):  # figures only: its prose lives in BENCHMARKS.md's Lowering section
        images = write_figures(results, path, args.markdown)
        print("\n".join(f"embed with: ![{pathlib.PurePosixPath(i).stem}]({i})" for i in images))
        return 0
    kind = BENCHMARKS.get(results.get("schema"))
    if kind is None:
        raise HfspecError(
            f"{path} is not an hfspec bench, bench-batch, bench-grammar, bench-aligned or verify-curve results file "
            f"(schema {results.get('schema')!r})"
        )
    write_section(kind, results, path, args.markdown)
    return 0


def cmd_conformance(args: argparse.Namespace, command: str) -> int:
    from hfspec.bench import conformance

    data = pathlib.Path(args.data) if args.data else conformance.default_data_dir()
    if data is None or not data.is_dir():
        raise HfspecError(
            f"JSONSchemaBench data not found ({data}): pass --data DIR or set ${conformance.DATA_ENV} "
            "(a source checkout has it in tests/data/jsonschemabench)"
        )
    torch.set_num_threads(1)
    report = conformance.run_conformance(
        data, limit=args.limit, progress=not args.no_progress, command=command
    )
    t = report["totals"]
    print(
        f"{t['compiled']}/{t['files']} schemas compiled; valid accepted {t['accepted']['compact']}/{t['valid']} "
        f"compact, {t['accepted']['indented']}/{t['valid']} indented; invalid rejected {t['rejected']}/"
        f"{t['invalid']}, caught by validation {t['caught']}, missed {t['missed']}; "
        f"mask p50 {t['mask_us_p50']} µs, p99 {t['mask_us_p99']} µs; {report['wall_s']} s"
    )
    print(f"results: {conformance.write_json(report, args.out_json)}")
    print(f"markdown: {conformance.write_markdown(report, args.out_md)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hfspec`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        return args.func(args, command="hfspec " + shlex.join(argv))
    except HfspecError as error:
        print(f"hfspec {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
