"""Where an 8-token verify's time goes, one linear at a time: the real pair's weight shapes, eager vs
hfspec's compiled options (frozen weights, max-autotune with inductor's C++ GEMM), at M = 1 and 8 rows,
with inductor's C++ GEMM tuning knobs, and bf16 autocast at prefill sizes.

Why: the compiled verify of the 1.5B costs 2.1× its one-token step (BENCHMARKS.md), while a
memory-bound verify would cost ≈ 1×. This says whether any knob closes that gap (it is the biggest
remaining lever in decode) and whether a bf16 draft prefill could be cheaper (it cannot here).
Random weights (the kernels do not care), one process, medians.

    python benchmarks/gemm_probe.py --out benchmarks/results/gemm-probe.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
from torch._inductor import config as inductor_config

from hfspec.bench.environment import load_average, machine_info
from hfspec.lowering.plan import CPU_INDUCTOR_OPTIONS

# (in, out) of every linear in one layer of the 1.5B target (Qwen2.5-1.5B: hidden 1536, MLP 8960,
# 2 KV heads of 128) and its lm head; gate and up are two linears of the same shape.
TARGET = {"q": (1536, 1536), "kv": (1536, 256), "o": (1536, 1536), "gate/up": (1536, 8960),
          "down": (8960, 1536), "lm_head": (1536, 151936)}
PER_LAYER = {"q": 1, "kv": 2, "o": 1, "gate/up": 2, "down": 1}
LAYERS = 28
# the 0.5B draft's MLP, at prefill sizes (the draft's prefill is free to change dtype)
DRAFT_MLP = (896, 4864)

KNOBS = {
    "default": {},
    "threads N-split": {"cpp.gemm_thread_factors": "1,2,1"},
    "threads K-split": {"cpp.gemm_thread_factors": "1,1,2"},
    "k slices unlimited": {"cpp.gemm_max_k_slices": 0},
    "blocking 1,4,16": {"cpp.gemm_cache_blocking": "1,4,16"},
    "blocking 1,8,8": {"cpp.gemm_cache_blocking": "1,8,8"},
}


def median_time(fn, reps: int) -> float:
    for _ in range(2):
        fn()
    samples = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def probe(shape: tuple[int, int], rows: int, options: dict, reps: int, autocast: bool = False) -> dict:
    """Eager and compiled time of one (rows × in) @ (in × out) linear."""
    torch._dynamo.reset()
    linear = torch.nn.Linear(*shape, bias=False).eval()
    x = torch.randn(1, rows, shape[0])

    def forward(inputs):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            return linear(inputs)

    with torch.no_grad(), inductor_config.patch({**CPU_INDUCTOR_OPTIONS, **options}):
        compiled = torch.compile(forward, fullgraph=True, dynamic=False)
        start = time.perf_counter()
        compiled(x)
        compile_s = time.perf_counter() - start
        eager_s = median_time(lambda: linear(x), reps)
        compiled_s = median_time(lambda: compiled(x), reps)
    flops, weight_bytes = 2 * rows * shape[0] * shape[1], shape[0] * shape[1] * 4
    return {"shape": list(shape), "rows": rows, "options": options, "autocast_bf16": autocast,
            "eager_s": eager_s, "compiled_s": compiled_s, "compile_s": compile_s,
            "compiled_gflops": flops / compiled_s / 1e9, "eager_gflops": flops / eager_s / 1e9,
            "compiled_weight_gbps": weight_bytes / compiled_s / 1e9}


def read_bandwidth(gigabytes: float, reps: int) -> float:
    """GB/s of one pass over a float32 tensor (a sum): the ceiling a weight-streaming forward meets."""
    x = torch.ones(int(gigabytes * 1e9 / 4))
    seconds = median_time(lambda: x.sum(), reps)
    return gigabytes / seconds


def layer_sum(rows: list[dict], m: int) -> float:
    """Seconds the target's linears take for one forward of m rows (28 layers + lm head), default knobs."""
    by = {(tuple(r["shape"]), r["rows"]): r["compiled_s"] for r in rows if not r["options"] and not r["autocast_bf16"]}
    per_layer = sum(PER_LAYER[name] * by[(TARGET[name], m)] for name in PER_LAYER)
    return LAYERS * per_layer + by[(TARGET["lm_head"], m)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_start = load_average()
    rows = []

    def record(row: dict, label: str) -> None:
        rows.append({**row, "label": label})
        print(f"{label:28s} {row['shape']} M={row['rows']:3d}  eager {row['eager_s'] * 1e3:7.2f} ms  compiled "
              f"{row['compiled_s'] * 1e3:7.2f} ms  {row['compiled_gflops']:5.0f} GFLOP/s  "
              f"{row['compiled_weight_gbps']:4.1f} GB/s of weights", flush=True)

    for name, shape in TARGET.items():
        for m in (1, 8):
            record(probe(shape, m, {}, args.reps), f"target {name}")
    for knob, options in KNOBS.items():
        if options:
            for name in ("gate/up", "down", "lm_head"):
                record(probe(TARGET[name], 8, options, args.reps), f"target {name} [{knob}]")
    for m in (128, 456):
        for autocast in (False, True):
            record(probe(DRAFT_MLP, m, {}, max(5, args.reps // 3), autocast),
                   f"draft mlp {'bf16 autocast' if autocast else 'float32'}")
    summary = {"target_linears_s": {str(m): layer_sum(rows, m) for m in (1, 8)}}
    summary["sum_read_gbps"] = read_bandwidth(2.0, 7)
    summary["best_weight_gbps"] = max(r["compiled_weight_gbps"] for r in rows if not r["autocast_bf16"])
    summary["best_read_gbps"] = max(summary["sum_read_gbps"], summary["best_weight_gbps"])
    summary["target_linears_ratio_8_over_1"] = summary["target_linears_s"]["8"] / summary["target_linears_s"]["1"]
    result = {
        "command": "python " + " ".join(sys.argv),
        "machine": machine_info(args.threads),
        "load_average": {"start": load_start, "end": load_average()},
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "torch": torch.__version__,
        "summary": summary,
        "rows": rows,
    }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
