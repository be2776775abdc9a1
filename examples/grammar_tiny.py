"""Structured generation in ten seconds, no downloads: a tiny random model writes schema-valid JSON.

    python examples/grammar_tiny.py

The model is random, so the values are nonsense; what the example shows is that every output
parses and validates, with and without speculation, and that speculation changes nothing.
"""

import pydantic
import torch

import hfspec
from hfspec.testing import perturbed_copy, tiny_json_tokenizer, tiny_model


class Record(pydantic.BaseModel):
    a: int = pydantic.Field(ge=0, le=99)
    b: str = pydantic.Field(pattern="^(x|yz)$")


tok = tiny_json_tokenizer()
target = tiny_model("llama", vocab_size=64, logit_scale=4.0, seed=3)  # any decoder-only HF model
draft = perturbed_copy(target, scale=0.05)
spec = hfspec.JSONSchema(Record, any_whitespace=False, tokenizer=tok)
prompt = torch.tensor([[5, 9, 12, 3, 7]])

outputs = {}
for name, (strategy, jump_forward) in {  # under grammar= jump-forward is on unless jump_forward=False
    "no speculation": (None, False),
    "jump-forward": (None, True),
    "draft model": (hfspec.DraftModel(draft, num_tokens=4), False),
    "jump-forward + draft": (hfspec.DraftModel(draft, num_tokens=4), True),
}.items():
    stats = hfspec.SpecStats()
    out = target.generate(input_ids=prompt, max_new_tokens=40, do_sample=False, custom_generate=hfspec.generate,
                          grammar=spec, assistant_strategy=strategy, jump_forward=jump_forward,
                          speculation_stats=stats)
    text = tok.decode(out[0, prompt.shape[1]:], skip_special_tokens=True)
    outputs[name] = out
    print(f"{name:22s} {text!r:28s} -> {spec.parse(text)!r}  target forwards: {stats.target_forwards}")

same = all(torch.equal(o, outputs["no speculation"]) for o in outputs.values())
print("identical with and without speculation:", same)

# the same through the opt-in patch, with the tokenizer passed like HF's stop_strings
hfspec.enable()
out = target.generate(input_ids=prompt, max_new_tokens=40, do_sample=True, temperature=0.8,
                      grammar=hfspec.JSONSchema(Record, any_whitespace=False), tokenizer=tok,
                      assistant_strategy=hfspec.PromptLookup())
print("sampled:", hfspec.JSONSchema(Record).parse(tok.decode(out[0, prompt.shape[1]:], skip_special_tokens=True)))
hfspec.disable()
