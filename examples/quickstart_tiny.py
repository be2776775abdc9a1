"""hfspec in ten seconds, no downloads: a tiny random model speculates with a noisy copy of itself.

    python examples/quickstart_tiny.py
"""

import torch
from transformers import pipeline

import hfspec
from hfspec.testing import perturbed_copy, tiny_model, tiny_tokenizer

target = tiny_model("llama", logit_scale=8.0)  # any decoder-only HF model works the same way
draft = perturbed_copy(target, scale=0.01)
prompt = torch.tensor([[5, 6, 7, 8, 5, 6, 7]])

plain = target.generate(input_ids=prompt, max_new_tokens=24)

# 1. patch-free: name hfspec's decoding method per call
stats = hfspec.SpecStats()
fast = target.generate(input_ids=prompt, max_new_tokens=24, custom_generate=hfspec.generate,
                       assistant_strategy=hfspec.DraftModel(draft, num_tokens=4), speculation_stats=stats)
print("draft model:  identical =", torch.equal(plain, fast), f"tokens/step = {stats.tokens_per_step:.2f}")

# 2. opt-in patch: plain generate() and pipelines accept assistant_strategy=
hfspec.enable()
fast = target.generate(input_ids=prompt, max_new_tokens=24, assistant_strategy=hfspec.PromptLookup(num_tokens=4))
print("prompt lookup: identical =", torch.equal(plain, fast))
pipe = pipeline("text-generation", model=target, tokenizer=tiny_tokenizer())
print(pipe("t5 t6 t7 t5 t6", max_new_tokens=8, do_sample=False, assistant_strategy=hfspec.PromptLookup()))
hfspec.disable()
