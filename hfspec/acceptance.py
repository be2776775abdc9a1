"""Acceptance rules of speculative decoding as pure tensor functions (docs/design.md, "Acceptance").

Every function takes the *processed* distributions (after the same logits processors on
target and draft) and returns ``(num_accepted, next_token)`` per row: the row keeps
``draft_ids[i, :num_accepted[i]]`` and then ``next_token[i]`` (a correction on rejection, a
bonus token when every draft was accepted). Nothing here touches models or caches, so the
math can be tested exhaustively on hand-built tensors.

Shapes: B rows, k draft positions (rows may use fewer: ``num_drafts``), V vocabulary.
"""

from __future__ import annotations

import torch


def _check_shapes(draft_ids: torch.Tensor, num_drafts: torch.Tensor, target: torch.Tensor) -> None:
    assert draft_ids.dim() == 2, f"draft_ids must be (B, k), got {tuple(draft_ids.shape)}"
    b, k = draft_ids.shape
    assert num_drafts.shape == (b,), f"num_drafts must be ({b},), got {tuple(num_drafts.shape)}"
    assert target.dim() == 3 and target.shape[:2] == (b, k + 1), (
        f"target must be (B={b}, k+1={k + 1}, V), got {tuple(target.shape)}"
    )
    assert b == 0 or (int(num_drafts.min()) >= 0 and int(num_drafts.max()) <= k), (
        f"num_drafts must lie in [0, k={k}], got {num_drafts.tolist()}"
    )


def _leading_true(accept: torch.Tensor, num_drafts: torch.Tensor) -> torch.Tensor:
    """Length of the run of accepted positions from the left, capped at each row's draft count."""
    k = accept.shape[1]
    valid = torch.arange(k, device=accept.device)[None, :] < num_drafts[:, None]
    return torch.cumprod((accept & valid).long(), dim=1).sum(dim=1)


def greedy_accept(
    draft_ids: torch.Tensor, num_drafts: torch.Tensor, target_scores: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Accept drafts while they equal argmax p; then emit argmax p at the first mismatch.

    draft_ids (B, k) long, num_drafts (B,) long, target_scores (B, k+1, V) processed scores.
    """
    _check_shapes(draft_ids, num_drafts, target_scores)
    k = draft_ids.shape[1]
    target_ids = target_scores.argmax(dim=-1)  # (B, k+1)
    n = _leading_true(draft_ids == target_ids[:, :k], num_drafts)
    return n, target_ids.gather(1, n[:, None]).squeeze(1)


def residual_distribution(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """norm(max(p - q, 0)) along the last axis; falls back to p where p == q (reject has prob 0 there)."""
    r = (p - q).clamp_min(0)
    total = r.sum(dim=-1, keepdim=True)
    return torch.where(total > 0, r / torch.where(total > 0, total, torch.ones_like(total)), p)


def speculative_accept(
    draft_ids: torch.Tensor,
    num_drafts: torch.Tensor,
    draft_probs: torch.Tensor | None,
    target_probs: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Speculative sampling; the output is distributed exactly as sampling from p.

    draft_probs (B, k, V) is the q each draft token was sampled from, or None for a
    deterministic proposal (prompt lookup, greedy draft), which is the one-hot q: accept x
    with prob p(x), else sample from p with x zeroed and renormalised.
    target_probs (B, k+1, V). Returns num_accepted (B,), next_token (B,).
    """
    _check_shapes(draft_ids, num_drafts, target_probs)
    b, k = draft_ids.shape
    p_draft = target_probs[:, :k].gather(-1, draft_ids[..., None]).squeeze(-1)  # (B, k)
    if draft_probs is None:
        q_draft = torch.ones_like(p_draft)
    else:
        assert draft_probs.shape == target_probs[:, :k].shape, (
            f"draft_probs must be {tuple(target_probs[:, :k].shape)}, got {tuple(draft_probs.shape)}"
        )
        q_draft = draft_probs.gather(-1, draft_ids[..., None]).squeeze(-1)
    u = torch.rand(p_draft.shape, generator=generator, device=p_draft.device, dtype=p_draft.dtype)
    # u < p/q  <=>  u*q < p ; equals accepting with prob min(1, p/q) and never divides by zero.
    n = _leading_true(u * q_draft < p_draft, num_drafts)

    rows = torch.arange(b, device=draft_ids.device)
    p_next = target_probs[rows, n]  # (B, V)
    rejected = n < num_drafts
    if rejected.any():
        x = draft_ids[rows, n.clamp_max(k - 1)]
        if draft_probs is None:
            q_next = torch.zeros_like(p_next).scatter_(1, x[:, None], 1.0)
        else:
            q_next = draft_probs[rows, n.clamp_max(k - 1)]
        p_next = torch.where(rejected[:, None], residual_distribution(p_next, q_next), p_next)
    next_token = torch.multinomial(p_next, 1, generator=generator).squeeze(1)
    return n, next_token
