"""Verify-step cost curve of a real model through hfspec's own runners: t(q) for q new tokens over
a cached prefix, eager (dynamic cache, what the eager engine runs) vs compiled (hfspec.compile's
graph over a static store: frozen weights, inductor options as given).

Each frozen graph holds its own copy of the weights (DESIGN.md §8), and freeing one inside a process
did not make room for the next (the 1.5B's second frozen graph was killed for memory), so the curve
is measured one q per process and merged. Per q: warm-up, then N alternating eager/compiled
repetitions, medians. Results: JSON (every sample) + a markdown table.

    for q in 1 2 4 8 16 32; do python benchmarks/verify_curve.py target --qs $q --out /tmp/vc/target-q$q.json; done
    python benchmarks/verify_curve.py merge benchmarks/results/verify-curve-qwen2.5-coder-1.5b.json /tmp/vc/target-q*.json

"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time

import torch
import transformers

import hfspec
from hfspec import models
from hfspec.kv import DynamicStore, StaticStore
from hfspec.lowering.plan import CPU_INDUCTOR_OPTIONS, GraphRunner, _compiler, _num_layers
from hfspec.runner import ModelRunner


def causal(q: int) -> torch.Tensor:
    return torch.ones((1, q, q), dtype=torch.bool).tril()


def sync(device: torch.device) -> None:
    """Wait for the device's queued kernels (CUDA runs asynchronously; CPU forwards return when done)."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def step(runner: ModelRunner, prefix: int, q: int, tokens: torch.Tensor) -> float:
    """Time one forward of q new tokens after ``prefix`` cached ones, then roll the store back."""
    positions = torch.arange(prefix, prefix + q)[None]
    sync(runner.model.device)
    start = time.perf_counter()
    with torch.no_grad():
        runner.run(tokens[:, prefix : prefix + q], positions, torch.ones((1, q), dtype=torch.bool), causal(q), keep=q)
    sync(runner.model.device)
    elapsed = time.perf_counter() - start
    runner.store.truncate(prefix)
    return elapsed


def fill(runner: ModelRunner, prefix: int, tokens: torch.Tensor) -> None:
    with torch.no_grad():
        runner.run(tokens[:, :prefix], torch.arange(prefix)[None], torch.ones((1, prefix), dtype=torch.bool),
                   causal(prefix), keep=1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("which", choices=["target", "draft"])
    parser.add_argument("--qs", default="1,2,4,8,16,32")
    parser.add_argument("--prefix", type=int, default=256, help="cached tokens before the verified ones")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--options", default="autotune", choices=["autotune", "freezing", "default"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                        help="weights' dtype (the draft's is free: only q changes, and acceptance uses q)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    qs = [int(x) for x in args.qs.split(",")]
    options = {"autotune": CPU_INDUCTOR_OPTIONS, "freezing": {"freezing": True}, "default": {}}[args.options]
    load_start = os.getloadavg()
    t0 = time.perf_counter()
    dtype = getattr(torch, args.dtype)
    model = models.load_model(models.TARGET if args.which == "target" else models.DRAFT, dtype=dtype, progress=False)
    print(f"loaded {args.which} in {time.perf_counter() - t0:.0f}s", flush=True)
    tokens = torch.randint(100, 20000, (1, args.prefix + max(qs)), generator=torch.Generator().manual_seed(0))
    eager = ModelRunner(model, DynamicStore(1))
    fill(eager, args.prefix, tokens)
    rows = []
    for q in qs:
        runner = GraphRunner(model, StaticStore(_num_layers(model), 1, args.prefix + q), q, _compiler("inductor", options))
        fill(runner, args.prefix, tokens)
        start = time.perf_counter()
        step(runner, args.prefix, q, tokens)  # compiles
        compile_s = time.perf_counter() - start
        # numerics vs eager on the same inputs
        positions = torch.arange(args.prefix, args.prefix + q)[None]
        ones = torch.ones((1, q), dtype=torch.bool)
        with torch.no_grad():
            a = eager.run(tokens[:, args.prefix : args.prefix + q], positions, ones, causal(q), keep=q)
            eager.store.truncate(args.prefix)
            b = runner.run(tokens[:, args.prefix : args.prefix + q], positions, ones, causal(q), keep=q)
            runner.store.truncate(args.prefix)
        step(eager, args.prefix, q, tokens)  # warm-up
        samples = {"eager": [], "compiled": []}
        for rep in range(args.reps):
            order = (("eager", eager), ("compiled", runner)) if rep % 2 == 0 else (("compiled", runner), ("eager", eager))
            for name, r in order:
                samples[name].append(step(r, args.prefix, q, tokens))
        row = {
            "q": q,
            "compile_s": compile_s,
            "eager_s": statistics.median(samples["eager"]),
            "compiled_s": statistics.median(samples["compiled"]),
            "max_abs_logit_diff": float((a.float() - b.float()).abs().max()),
            "argmax_equal": bool((a.argmax(-1) == b.argmax(-1)).all()),
            "graphs": runner.compiles,
            "samples": samples,
        }
        rows.append(row)
        print(f"q={q:2d} eager {row['eager_s'] * 1e3:7.1f} ms  compiled {row['compiled_s'] * 1e3:7.1f} ms  "
              f"({row['eager_s'] / row['compiled_s']:.2f}x)  compile {compile_s:.0f}s  max|dlogit| "
              f"{row['max_abs_logit_diff']:.1e}  argmax equal {row['argmax_equal']}", flush=True)
        del runner
        torch._dynamo.reset()
        gc.collect()
    e1 = next(r["eager_s"] for r in rows if r["q"] == qs[0])
    c1 = next(r["compiled_s"] for r in rows if r["q"] == qs[0])
    for r in rows:
        r["eager_over_eager_q1"] = r["eager_s"] / e1
        r["compiled_over_compiled_q1"] = r["compiled_s"] / c1
        r["compiled_over_eager_q1"] = r["compiled_s"] / e1
    result = {
        "command": "python " + " ".join(sys.argv),
        "model": args.which,
        "prefix": args.prefix,
        "reps": args.reps,
        "options": {k: v for k, v in options.items()},
        "dtype": args.dtype,
        "threads": args.threads,
        "versions": {"hfspec": hfspec.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
                     "python": platform.python_version()},
        "load_average": {"start": load_start, "end": os.getloadavg()},
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "rows": rows,
    }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    with open(args.out.removesuffix(".json") + ".md", "w") as f:
        f.write(render(result))
    print(render(result))
    return 0


def merge(paths: list[str], out: str) -> dict:
    """One curve from one-q-per-process runs (each frozen 1.5B graph needs its own process: two
    in one process ran out of 24 GiB). Ratios are recomputed against the smallest q."""
    parts = [json.load(open(p)) for p in paths]
    rows = sorted((r for part in parts for r in part["rows"]), key=lambda r: r["q"])
    e1, c1 = rows[0]["eager_s"], rows[0]["compiled_s"]
    for r in rows:
        r["eager_over_eager_q1"] = r["eager_s"] / e1
        r["compiled_over_compiled_q1"] = r["compiled_s"] / c1
        r["compiled_over_eager_q1"] = r["compiled_s"] / e1
    result = {**parts[0], "rows": rows, "command": "; ".join(p["command"] for p in parts),
              "load_average": {"per_process": [p["load_average"] for p in parts]}}
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    with open(out.removesuffix(".json") + ".md", "w") as f:
        f.write(render(result))
    return result


def render(result: dict) -> str:
    lines = [
        f"Command: `{result['command']}`  ",
        f"Load average {result['load_average']}; "
        f"prefix {result['prefix']} cached tokens; medians of {result['reps']}; inductor options {result['options']}; dtype {result.get('dtype', 'float32')}",
        "",
        "| q | eager ms | compiled ms | eager/compiled | t(q)/t(1) eager | t(q)/t(1) compiled | compiled t(q) / eager t(1) | compile s | max abs dlogit | argmax equal |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['q']} | {r['eager_s'] * 1e3:.0f} | {r['compiled_s'] * 1e3:.0f} | {r['eager_s'] / r['compiled_s']:.2f}x | "
            f"{r['eager_over_eager_q1']:.2f} | {r['compiled_over_compiled_q1']:.2f} | {r['compiled_over_eager_q1']:.2f} | "
            f"{r['compile_s']:.0f} | {r['max_abs_logit_diff']:.1e} | {'yes' if r['argmax_equal'] else 'no'} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if sys.argv[1:2] == ["merge"]:  # python benchmarks/verify_curve.py merge OUT.json IN.json ...
        print(render(merge(sys.argv[3:], sys.argv[2])))
        sys.exit(0)
    sys.exit(main())
