"""Tiny randomly initialised models for tests and for users checking hfspec on their setup.

Built in-process (no hub). float64 by default so that a (k+1)-token verify forward and k+1
one-token forwards agree to ~1e-15 and greedy identity tests cannot flake on near-ties.
"""

from __future__ import annotations

import copy
import importlib.resources
import pathlib

import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
)

ARCHITECTURES = ("llama", "qwen2", "gpt2")


def tiny_model(
    arch: str = "llama",
    *,
    vocab_size: int = 64,
    hidden_size: int = 32,
    num_layers: int = 2,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    eos_token_id: int | None = 1,
    pad_token_id: int | None = 0,
    logit_scale: float = 1.0,
) -> PreTrainedModel:
    """A deterministic tiny causal LM of the given architecture ("llama", "qwen2", "gpt2").

    ``logit_scale`` multiplies the LM head so tests can make distributions peakier (random
    tiny models are close to uniform otherwise).
    """
    common = dict(vocab_size=vocab_size, eos_token_id=eos_token_id, pad_token_id=pad_token_id, bos_token_id=None)
    if arch == "llama":
        config = LlamaConfig(
            hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=num_layers,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, **common,
        )
        cls = LlamaForCausalLM
    elif arch == "qwen2":
        config = Qwen2Config(
            hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=num_layers,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, **common,
        )
        cls = Qwen2ForCausalLM
    elif arch == "gpt2":
        config = GPT2Config(n_embd=hidden_size, n_layer=num_layers, n_head=4, n_positions=512, **common)
        cls = GPT2LMHeadModel
    else:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {ARCHITECTURES}")
    torch.manual_seed(seed)
    model = cls(config).to(dtype).eval()
    if logit_scale != 1.0:
        with torch.no_grad():
            head = model.get_output_embeddings()
            head.weight = torch.nn.Parameter(head.weight.detach().clone() * logit_scale)
    model.generation_config.pad_token_id = pad_token_id
    model.generation_config.eos_token_id = eos_token_id
    model.generation_config.bos_token_id = None
    return model


def tiny_tokenizer(vocab_size: int = 64):
    """A word-level tokenizer over the words "t0" … "t{V-2}" (pad "t0", eos "t1"), built offline.

    Lets pipelines, stop_strings and streamers run against tiny models without a hub. The
    last id is the word "abcdef": HF's StopStringCriteria tokenizes that probe string to
    learn how tokens render.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(vocab_size - 1)} | {"abcdef": vocab_size - 1}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="t2"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="t0", eos_token="t1", unk_token="t2")
    tok.padding_side = "left"
    return tok


# Characters and a few merged pieces: enough for JSON, regexes and EBNF over a tiny vocabulary.
_JSON_CHARS = list('{}[]":, ') + list("0123456789") + list("abcdefxyzlnrstu") + ["\n", "-", "."]
_JSON_MERGES = [("{", '"'), ('"', ":"), ('"', ","), ('"', "}"), (":", " "), (",", " "), ("a", "b"), ("1", "2"),
                ("}", "\n"), ("ab", "c"), ('":', " ")]
JSON_SPECIALS = ("<pad>", "</s>", "<unk>")


def tiny_json_tokenizer():
    """A BPE tokenizer (<= 64 tokens) over JSON characters plus merged pieces like '{"' and '": '.

    ids 0/1/2 are pad/eos/unk, matching ``tiny_model``'s pad 0 and eos 1, so a tiny model and
    xgrammar can run grammar-constrained decoding end to end without a hub. Several token
    sequences spell the same text (as in real BPE vocabularies), which is what makes masks,
    jump-forward and rollback non-trivial.
    """
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    pieces = list(JSON_SPECIALS) + _JSON_CHARS + ["".join(m) for m in _JSON_MERGES] + ["true", "false", "null"]
    vocab = {piece: i for i, piece in enumerate(pieces)}
    core = Tokenizer(models.BPE(vocab=vocab, merges=_JSON_MERGES, unk_token="<unk>"))
    core.decoder = decoders.Fuse()  # tokens are raw text: join without spaces
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    tok.padding_side = "left"
    return tok


class FromScratchMask:
    """A reference grammar processor for plain ``generate(logits_processor=[...])``: masks every row
    by re-parsing its generated tokens with a fresh xgrammar matcher at every step.

    Slow and obviously right (no rollback, no state between steps), so tests compare hfspec's
    grammar-constrained outputs with plain HF decoding under this mask. Needs the ``grammar`` extra.
    """

    def __init__(self, compiled, prompt_len: int, *, vocab_size: int, stop_token_ids=(1,)) -> None:
        self.compiled, self.prompt_len = compiled, prompt_len
        self.vocab_size, self.stop_token_ids = vocab_size, list(stop_token_ids)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        import xgrammar as xgr

        scores = scores.float().clone()
        bitmask = xgr.allocate_token_bitmask(input_ids.shape[0], self.vocab_size)
        bitmask.fill_(-1)
        for row in range(input_ids.shape[0]):
            matcher = xgr.GrammarMatcher(self.compiled, override_stop_tokens=self.stop_token_ids)
            ok = True
            for token in input_ids[row, self.prompt_len :].tolist():
                if matcher.is_terminated() or not matcher.accept_token(int(token)):
                    ok = False
                    break
            if ok and not matcher.is_terminated():
                matcher.fill_next_token_bitmask(bitmask, row)
        xgr.apply_token_bitmask_inplace(scores, bitmask)
        return scores


def perturbed_copy(model: PreTrainedModel, scale: float = 0.05, seed: int = 1) -> PreTrainedModel:
    """A draft that agrees with ``model`` often but not always: weights plus Gaussian noise."""
    draft = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in draft.parameters():
            param.add_(torch.randn(param.shape, generator=gen, dtype=param.dtype) * scale)
    return draft


def qwen_tokenizer_dir() -> pathlib.Path:
    """The Qwen2.5-Coder tokenizer shipped with hfspec (package data): a real 151,936-wide vocabulary
    for grammar tests and the conformance benchmark, without the model weights."""
    return pathlib.Path(str(importlib.resources.files("hfspec") / "data" / "qwen2.5-coder-tokenizer"))


def qwen_tokenizer() -> object:
    """The packaged Qwen2.5-Coder tokenizer (see ``qwen_tokenizer_dir``), loaded."""
    return load_tokenizer_dir(qwen_tokenizer_dir())


def load_tokenizer_dir(path) -> object:
    """Load a tokenizer saved as ``tokenizer.json.gz`` + ``tokenizer_config.json`` (hfspec/data).

    hfspec carries the Qwen2.5-Coder tokenizer this way (2 MB instead of the 491 MB
    GGUF it was extracted from by ``hfspec.models.load_tokenizer``) so grammar conformance runs
    against the real vocabulary in CI. ``tests/test_models.py`` checks the copy is identical.
    """
    import gzip
    import json
    import pathlib

    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    path = pathlib.Path(path)
    with gzip.open(path / "tokenizer.json.gz", "rt", encoding="utf-8") as handle:
        core = Tokenizer.from_str(handle.read())
    config = json.loads((path / "tokenizer_config.json").read_text())
    specials = {k: config[k] for k in ("bos_token", "eos_token", "pad_token", "unk_token") if config.get(k)}
    tok = PreTrainedTokenizerFast(tokenizer_object=core, **specials)
    template = path / "chat_template.jinja"
    if template.exists():
        tok.chat_template = template.read_text()
    return tok
