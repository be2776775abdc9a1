"""Where a compiled speculative step's time goes, on the real pair (Qwen2.5-Coder 1.5B + 0.5B draft).

One process: compile the target's verify graph (before the draft is loaded: memory, see
BENCHMARKS.md#lowering), load the draft, warm up (compiles the draft graph), then one timed greedy
call per prompt. Every forward of both runners is timed and split into graph calls and eager calls;
"host" is the rest of the call (masks, processors, acceptance, commit, Python). Prints a table and
writes JSON.

    python benchmarks/profile_step.py --max-new-tokens 96 --out benchmarks/results/profile-step.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections import defaultdict

import torch

import hfspec
from hfspec import models
from hfspec.bench.speed import chat_prompt, load_prompt_specs, stop_token_ids


def timed(runner, name: str, totals: dict) -> None:
    """Wrap ``runner._call`` (every forward) with a timer keyed by graph/eager."""
    inner = runner._call

    def call(tokens, positions, mask, keep):
        graph = runner.uses_graph(tokens.shape[1])
        start = time.perf_counter()
        out = inner(tokens, positions, mask, keep)
        kind = f"{name} {'graph' if graph else 'eager'} q={tokens.shape[1]}"
        totals[kind][0] += time.perf_counter() - start
        totals[kind][1] += 1
        return out

    runner._call = call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--draft-tokens", type=int, default=7)
    parser.add_argument("--capacity", type=int, default=2048)
    parser.add_argument("--draft-vocab", type=int, default=None, help="DraftModel(draft_vocab=N): pruned draft head")
    parser.add_argument("--strategy", choices=["draft", "lookup_or_draft"], default="draft")
    parser.add_argument("--draft-dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    target = models.load_model(models.TARGET, progress=False)
    tokenizer = models.load_tokenizer(models.DRAFT)
    prompts = [chat_prompt(tokenizer, s) for s in load_prompt_specs(None)]
    eos = stop_token_ids(tokenizer, target)
    plan = hfspec.compile(target, hfspec.PromptLookup(num_tokens=args.draft_tokens), capacity=args.capacity)
    kwargs = dict(do_sample=False, custom_generate=hfspec.generate, eos_token_id=eos, pad_token_id=eos[0])
    t0 = time.perf_counter()
    target.generate(input_ids=prompts[0].input_ids, max_new_tokens=2, assistant_strategy=plan, **kwargs)
    compile_target = time.perf_counter() - t0
    draft = models.load_model(models.DRAFT, dtype=getattr(torch, args.draft_dtype), progress=False)
    strategy = hfspec.DraftModel(draft, num_tokens=args.draft_tokens, draft_vocab=args.draft_vocab)
    if args.strategy == "lookup_or_draft":
        strategy = hfspec.LookupOrDraft(hfspec.PromptLookup(num_tokens=args.draft_tokens), strategy)
    plan = plan.sharing(strategy)
    t0 = time.perf_counter()
    target.generate(input_ids=prompts[0].input_ids, max_new_tokens=8, assistant_strategy=plan, **kwargs)
    compile_draft = time.perf_counter() - t0

    totals: dict = defaultdict(lambda: [0.0, 0])
    timed(plan.target, "target", totals)
    timed(plan.draft, "draft", totals)
    rows = []
    for prompt in prompts:
        totals.clear()
        stats = hfspec.SpecStats()
        start = time.perf_counter()
        out = target.generate(input_ids=prompt.input_ids, max_new_tokens=args.max_new_tokens, assistant_strategy=plan,
                              speculation_stats=stats, **kwargs)
        wall = time.perf_counter() - start
        forwards = sum(t for t, _ in totals.values())
        new = out.shape[1] - prompt.input_ids.shape[1]
        rows.append({
            "prompt": prompt.name, "new_tokens": new, "wall_s": wall, "tok_per_s": new / wall,
            "steps": stats.target_forwards, "tau": stats.tokens_per_step, "host_s": wall - forwards,
            "forwards": {k: {"seconds": t, "calls": n, "ms_per_call": 1e3 * t / n} for k, (t, n) in sorted(totals.items())},
        })
    result = {
        "command": "python benchmarks/profile_step.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None),
        "machine": {"cpu": platform.processor(), "load_average": os.getloadavg(), "threads": args.threads,
                    "torch": torch.__version__},
        "compile_seconds": {"target_first_call": compile_target, "draft_first_call": compile_draft},
        "rows": rows,
    }
    for row in rows:
        steps = max(row["steps"], 1)
        print(f"\n{row['prompt']}: {row['new_tokens']} tokens in {row['wall_s']:.1f} s = {row['tok_per_s']:.2f} tok/s, "
              f"{row['steps']} steps, tau {row['tau']:.2f}, {1e3 * row['wall_s'] / steps:.0f} ms/step")
        for kind, f in row["forwards"].items():
            print(f"  {kind:22s} {f['calls']:4d} calls {f['ms_per_call']:7.1f} ms/call {1e3 * f['seconds'] / steps:7.1f} ms/step")
        print(f"  {'host':22s} {'':20s} {1e3 * row['host_s'] / steps:7.1f} ms/step")
    print("load average", os.getloadavg())
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(result, handle, indent=1)


if __name__ == "__main__":
    main()
