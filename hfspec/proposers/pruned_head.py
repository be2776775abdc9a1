"""A draft model's LM head restricted to a subset of the vocabulary (FR-Spec, Zhao et al. 2025).

Why: a small draft's head is a large share of its step. The Qwen2.5 0.5B's head is 151,936 × 896
(545 MB in fp32); a compiled one-token step streams it at memory bandwidth, about 17 ms of a 58 ms
step on these CPUs. Drafting from the N most frequent tokens reads N rows instead.

Exactness does not depend on the subset: drafts are drawn from the subset's renormalised
distribution, q is exactly that distribution (0 outside the subset), and verification is
unchanged, so greedy output stays identical to the target's and sampled output keeps the
target's distribution. What the subset costs is acceptance: a target token outside it can
never be drafted.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedModel

from hfspec.exceptions import ConfigurationError

# Configs whose ForCausalLM applies more than the head's linear map to the hidden states.
_POST_HEAD_ATTRIBUTES = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


class PrunedHead(torch.nn.Module):
    """Rows ``ids`` of a model's output embedding; logits outside them are -inf.

    hidden (B, Q, H) -> logits (B, Q, width), width = the full head's width, so everything after
    the head (processors, acceptance, grammar masks) sees the usual shape.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, ids: torch.Tensor, width: int) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(weight, requires_grad=False)  # (N, H)
        self.bias = torch.nn.Parameter(bias, requires_grad=False) if bias is not None else None  # (N,)
        self.register_buffer("ids", ids, persistent=False)  # (N,) long, ascending
        self.width = width

    @property
    def num_tokens(self) -> int:
        return int(self.ids.shape[0])

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = torch.nn.functional.linear(hidden, self.weight, self.bias)
        full = logits.new_full((*logits.shape[:-1], self.width), float("-inf"))
        return full.index_copy_(full.dim() - 1, self.ids, logits)


def draft_vocab_ids(model: PreTrainedModel, draft_vocab: int | Sequence[int]) -> torch.Tensor:
    """The token ids a pruned head keeps: the first N ids, or the given ids; plus the EOS ids.

    The first N ids: byte-level BPE vocabularies (Qwen2, Llama 3, GPT-2) number tokens in merge
    order, which follows corpus frequency; ids ranked by counts on your own corpus do better.
    EOS ids are always kept, so the draft can propose the end of an answer.
    """
    width = _head(model).weight.shape[0]
    if isinstance(draft_vocab, bool) or not isinstance(draft_vocab, (int, Sequence, torch.Tensor)):
        raise ConfigurationError(f"draft_vocab must be an int or a sequence of token ids, got {draft_vocab!r}.")
    if isinstance(draft_vocab, int):
        if not 1 <= draft_vocab <= width:
            raise ConfigurationError(f"draft_vocab={draft_vocab} must be between 1 and the head's width {width}.")
        ids = torch.arange(draft_vocab)
    else:
        ids = torch.as_tensor(list(draft_vocab) if not isinstance(draft_vocab, torch.Tensor) else draft_vocab)
        if ids.dim() != 1 or ids.numel() == 0 or ids.dtype.is_floating_point:
            raise ConfigurationError("draft_vocab as ids must be a non-empty 1-D sequence of ints.")
        ids = ids.long()
        if int(ids.min()) < 0 or int(ids.max()) >= width:
            raise ConfigurationError(f"draft_vocab ids must lie in [0, {width}); got {int(ids.min())}..{int(ids.max())}.")
    eos = model.generation_config.eos_token_id
    eos = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
    eos = [e for e in eos if 0 <= e < width]
    return torch.unique(torch.cat([ids, torch.tensor(eos, dtype=torch.long)]))


def pruned_head(model: PreTrainedModel, draft_vocab: int | Sequence[int]) -> PrunedHead:
    """Build the pruned head of ``model`` (a copy of the kept rows; the model is not changed)."""
    config = model.config.get_text_config(decoder=True)
    for attr in _POST_HEAD_ATTRIBUTES:
        value = getattr(config, attr, None)
        if value not in (None, 1, 1.0):
            raise ConfigurationError(
                f"{type(model).__name__} applies {attr}={value} after its LM head; draft_vocab= supports heads that are "
                "a plain linear map. Drop draft_vocab= for this draft."
            )
    if getattr(model, "base_model", model) is model:
        raise ConfigurationError(f"{type(model).__name__} has no separate base model; draft_vocab= needs one.")
    head = _head(model)
    ids = draft_vocab_ids(model, draft_vocab).to(head.weight.device)
    bias = head.bias.detach()[ids].clone() if getattr(head, "bias", None) is not None else None
    return PrunedHead(head.weight.detach()[ids].clone(), bias, ids, int(head.weight.shape[0]))


def _head(model: PreTrainedModel) -> torch.nn.Module:
    head = model.get_output_embeddings()
    if head is None or getattr(head, "weight", None) is None:
        raise ConfigurationError(f"{type(model).__name__} has no output embedding to prune.")
    return head
