"""The verify cost curve on a CUDA device, eager vs the plan's CUDA-graphs (and inductor) graph, for
models with the real pair's shapes and random weights (the device machine reaches no registry and
carries at most 64 MiB, so the packaged weights cannot travel; kernels do not care about values).

Also checks greedy identity of a plan (the first backend: cudagraphs by default) against plain
``generate`` on the 1.5B-shaped model.
Written for ``benchmarks/gpu_check.sh`` on a device machine; not run on the CPU machines.

    python benchmarks/gpu_check.py --out $OUT/gpu-verify-curve.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

# run as a script, benchmarks/ is on sys.path; these follow the model's device
from verify_curve import fill, step, sync

import hfspec
from hfspec.kv import DynamicStore, StaticStore
from hfspec.lowering.plan import GraphRunner, _compiler, _num_layers
from hfspec.runner import ModelRunner

# Qwen2.5(-Coder) 1.5B and 0.5B shapes (their config.json files)
SHAPES = {
    "1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2, tie_word_embeddings=True),
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, tie_word_embeddings=True),
    # a smoke test of this script on a CPU (--device cpu --sizes tiny --backends eager)
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, tie_word_embeddings=True),
}
DEVICE = "cuda"


def build(size: str, dtype: torch.dtype) -> Qwen2ForCausalLM:
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=151936, max_position_embeddings=4096, rope_theta=1e6, **SHAPES[size],
                         attn_implementation="sdpa")
    return Qwen2ForCausalLM(config).to(dtype=dtype, device=DEVICE).eval()


def curve(model, qs: list[int], prefix: int, reps: int, backends: list[str]) -> list[dict]:
    tokens = torch.randint(100, 20000, (1, prefix + max(qs)), device=DEVICE, generator=None)
    eager = ModelRunner(model, DynamicStore(1, device=DEVICE))
    fill(eager, prefix, tokens)
    rows = []
    for q in qs:
        row = {"q": q}
        runners = {"dynamic": eager}  # the eager engine's runner over a dynamic cache
        for backend in backends:
            options = {"freezing": True} if backend == "inductor" else None
            runner = GraphRunner(model, StaticStore(_num_layers(model), 1, prefix + q, DEVICE), q,
                                 _compiler(backend, options))
            fill(runner, prefix, tokens)
            start = time.perf_counter()
            step(runner, prefix, q, tokens)  # compiles (and records the CUDA graph)
            row[f"{backend}_compile_s"] = time.perf_counter() - start
            runners[backend] = runner
        for runner in runners.values():
            step(runner, prefix, q, tokens)
        samples = {name: [] for name in runners}
        for rep in range(reps):
            for name in (list(runners) if rep % 2 == 0 else list(reversed(runners))):
                samples[name].append(step(runners[name], prefix, q, tokens))
        for name in runners:
            row[f"{name}_s"] = statistics.median(samples[name])
        row["samples"] = samples
        rows.append(row)
        print(f"q={q:2d} " + "  ".join(f"{n} {row[f'{n}_s'] * 1e3:7.2f} ms" for n in runners), flush=True)
        for name in backends:
            del runners[name]
        torch._dynamo.reset()
    return rows


def identity(model, new_tokens: int, backend: str) -> dict:
    """Greedy output of a plan (prompt lookup) equals plain generate's on the 1.5B shape."""
    torch.manual_seed(1)
    ids = torch.randint(100, 20000, (1, 64), device=DEVICE)
    ids = torch.cat([ids, ids[:, :32]], dim=1)  # something to look up
    plan = hfspec.compile(model, hfspec.PromptLookup(num_tokens=7), backend=backend, capacity=512)
    kwargs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, do_sample=False)
    timings = {}
    outputs = {}
    for name, extra in (("plain", {}), ("plan", dict(custom_generate=hfspec.generate, assistant_strategy=plan))):
        model.generate(**kwargs, **extra)  # warm-up (and the plan's capture)
        sync(model.device)
        start = time.perf_counter()
        outputs[name] = model.generate(**kwargs, **extra)
        sync(model.device)
        timings[name] = time.perf_counter() - start
    return {"identical": bool(torch.equal(outputs["plain"], outputs["plan"])), "seconds": timings,
            "new_tokens": new_tokens, "compiles": plan.compiles}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--qs", default="1,2,4,8,16,32")
    parser.add_argument("--prefix", type=int, default=256)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--backends", default="cudagraphs,inductor")
    parser.add_argument("--sizes", default="1.5b,0.5b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    global DEVICE
    DEVICE = args.device
    if DEVICE == "cuda" and not torch.cuda.is_available():
        print("gpu_check.py needs a CUDA device (--device cpu --sizes tiny --backends eager: a smoke test)",
              file=sys.stderr)
        return 2
    dtype = getattr(torch, args.dtype)
    qs = [int(x) for x in args.qs.split(",")]
    backends = [b for b in args.backends.split(",") if b]
    result = {"command": "python " + " ".join(sys.argv), "device": torch.cuda.get_device_name() if DEVICE == "cuda" else DEVICE,
              "torch": torch.__version__, "dtype": args.dtype, "prefix": args.prefix, "reps": args.reps,
              "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "hfspec_allow_untested": os.environ.get("HFSPEC_ALLOW_UNTESTED")}
    for size in args.sizes.split(","):
        model = build(size, dtype)
        result[size] = {"curve": curve(model, qs if size != "0.5b" else [1, 2], args.prefix, args.reps, backends)}
        if size != "0.5b":
            result[size]["identity"] = identity(model, 64, backends[0] if backends else "eager")
            print("identity", result[size]["identity"], flush=True)
        del model
        if DEVICE == "cuda":
            torch.cuda.empty_cache()
        with open(args.out, "w") as f:  # after each model: a timeout still leaves what was measured
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
