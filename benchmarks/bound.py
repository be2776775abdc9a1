"""An upper bound on end-to-end speed-up for the real pair on this machine, from committed measurements.

Keep everything a run measured (the target's and the draft's prefills, the steps, τ and the draft
forwards of `benchmarks/profile_step.py`), and make every graph call as cheap as this machine allows:
each forward streams its weights once at the best read bandwidth measured here
(`benchmarks/gemm_probe.py`), with no host time. Compare the bound wall time with HF's measured ones
(plain and the best built-in, from a `hfspec bench` run on the same prompts).

    python benchmarks/bound.py --profile benchmarks/results/profile-step-lookup-or-draft.json \
        --bench benchmarks/results/qwen2.5-coder-1.5b_0.5b-lowering-bf16-graph.json \
        --probe benchmarks/results/gemm-probe.json
"""

from __future__ import annotations

import argparse
import json
import math

TARGET_PARAMS = 1.544e9  # Qwen2.5-Coder-1.5B, the tied embedding counted once (read by the lm head)
DRAFT_PARAMS = 0.494e9  # Qwen2.5-Coder-0.5B
HF_BUILTINS = ("hf_assisted", "hf_prompt_lookup")


def bound_rows(profile: dict, bench: dict, gbps: float, target_bytes: int = 4, draft_bytes: int = 2) -> list[dict]:
    """Per prompt: measured prefills + graph calls at ``gbps`` -> bound wall, and HF's walls."""
    verify_s = TARGET_PARAMS * target_bytes / (gbps * 1e9)
    draft_s = DRAFT_PARAMS * draft_bytes / (gbps * 1e9)
    walls = {(r["prompt"], r["config"]): r["wall_s"] for r in bench["runs"] if r["mode"] == "greedy"}
    rows = []
    for r in profile["rows"]:
        forwards = r["forwards"]
        eager = {name: f for name, f in forwards.items() if " eager q=" in name}
        # each model's prompt prefill: its widest eager forward (kept as measured); other eager draft
        # forwards (catch-ups after lookup steps) are counted as one bound draft forward each
        widest = {model: max((n for n in eager if n.startswith(model)), key=lambda n: int(n.split("q=")[1]))
                  for model in ("target", "draft") if any(n.startswith(model) for n in eager)}
        prefills = sum(eager[n]["seconds"] for n in widest.values())
        draft_calls = sum(f["calls"] for name, f in forwards.items() if name.startswith("draft")
                          and name not in widest.values())
        wall = prefills + r["steps"] * verify_s + draft_calls * draft_s
        plain = walls[(r["prompt"], "hf_plain")]
        best = min(walls[(r["prompt"], c)] for c in HF_BUILTINS if (r["prompt"], c) in walls)
        rows.append({"prompt": r["prompt"], "measured_wall_s": r["wall_s"], "eager_prefills_s": prefills,
                     "steps": r["steps"], "tau": r["tau"], "draft_graph_calls": draft_calls, "bound_wall_s": wall,
                     "hf_plain_s": plain, "best_hf_s": min(best, plain),
                     "bound_x_plain": plain / wall, "bound_x_best_hf": min(best, plain) / wall})
    return rows


def geomean(xs: list[float]) -> float:
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", required=True)
    parser.add_argument("--bench", required=True)
    parser.add_argument("--probe", help="gemm_probe.py JSON: its best read bandwidth is the ceiling")
    parser.add_argument("--gbps", type=float, help="the ceiling, if no --probe")
    args = parser.parse_args()
    gbps = args.gbps or json.load(open(args.probe))["summary"]["best_read_gbps"]
    rows = bound_rows(json.load(open(args.profile)), json.load(open(args.bench)), gbps)
    print(f"ceiling {gbps:.1f} GB/s: verify {TARGET_PARAMS * 4 / gbps / 1e9 * 1e3:.0f} ms, "
          f"bf16 draft step {DRAFT_PARAMS * 2 / gbps / 1e9 * 1e3:.0f} ms")
    print("| prompt | measured wall | eager prefills | steps | draft graph calls | bound wall | HF plain | best HF | bound ×plain | bound ×best HF |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['prompt']} | {r['measured_wall_s']:.1f} s | {r['eager_prefills_s']:.1f} s | {r['steps']} | "
              f"{r['draft_graph_calls']} | {r['bound_wall_s']:.1f} s | {r['hf_plain_s']:.1f} s | {r['best_hf_s']:.1f} s | "
              f"{r['bound_x_plain']:.2f}× | {r['bound_x_best_hf']:.2f}× |")
    print(f"| geometric mean | | | | | | | | **{geomean([r['bound_x_plain'] for r in rows]):.2f}×** | "
          f"**{geomean([r['bound_x_best_hf'] for r in rows]):.2f}×** |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
