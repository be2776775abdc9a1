"""The step contract between proposer, verifier and committer: typed records and their builders.

One step: a ``Proposal`` (a token tree per row; a chain is the special case) becomes a
``VerifyBatch`` (tokens, positions, visibility; padded to a fixed node budget when a compiled
graph needs constant shapes), the target scores every column, an acceptance rule walks the tree
and returns a ``StepResult``, which the committer, the KV stores and the proposer session read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from hfspec.tree import ancestry, node_positions


@dataclass
class VerifyBatch:
    """Inputs of one target forward. Columns: catch-up slots (not yet in the cache), root, nodes."""

    tokens: torch.Tensor  # (B, Q) long: catch-up slot tokens, then the root (pending), then N nodes
    positions: torch.Tensor  # (B, Q) long: token position of each column
    valid: torch.Tensor  # (B, Q) bool: column holds a real token (False: layout hole or padding node)
    visible: torch.Tensor  # (B, Q, Q) bool: column i may attend to column j (causal / tree ancestry)
    root: int  # column of the root; logits are needed for columns [root, Q)
    node_tokens: torch.Tensor  # (B, N) long: the tree's draft tokens (N = node budget when padded)
    parents: torch.Tensor  # (B, N) long: parent node per node, -1 = root
    num_nodes: torch.Tensor  # (B,) long: real nodes per row

    @property
    def num_columns(self) -> int:
        return self.tokens.shape[1]

    def part(self, start: int, end: int) -> VerifyBatch:
        """Columns [start, end) as a batch of their own (earlier columns become cached keys)."""
        return VerifyBatch(
            self.tokens[:, start:end],
            self.positions[:, start:end],
            self.valid[:, start:end],
            self.visible[:, start:end, start:end],
            max(self.root - start, 0),
            self.node_tokens,
            self.parents,
            self.num_nodes,
        )


def build_verify_batch(
    slot_tokens: torch.Tensor,
    slot_mask: torch.Tensor,
    seen: int,
    pending: torch.Tensor,
    node_tokens: torch.Tensor,
    parents: torch.Tensor,
    num_nodes: torch.Tensor,
    budget: int | None = None,
) -> VerifyBatch:
    """The one builder of verify inputs.

    slot_tokens/slot_mask (B, S): the engine's slot layout; slots [seen, S) are not cached yet
    pending (B,): the root; node_tokens/parents (B, n), num_nodes (B,): the proposal
    budget: pad the nodes to exactly this many (fixed shapes for compiled graphs); None = n
    """
    b, n = node_tokens.shape
    device = node_tokens.device
    width = n if budget is None else budget
    if width < n:
        raise ValueError(f"proposal has {n} nodes, more than the node budget {width}")
    if width > n:
        pad = width - n
        node_tokens = torch.cat([node_tokens, node_tokens.new_zeros((b, pad))], dim=1)
        parents = torch.cat([parents, torch.arange(n, width, device=device).expand(b, pad) - 1], dim=1)
    num_nodes = num_nodes.to(device)
    slot_mask = slot_mask.to(device).bool()
    catch_up = slot_tokens.shape[1] - seen
    counts = slot_mask.long().cumsum(dim=1)
    catch_pos = (counts - 1).clamp_min(0)[:, seen:]
    root_pos = slot_mask.sum(dim=1)
    tree_pos = node_positions(root_pos, parents, num_nodes)  # (B, 1 + width)

    tokens = torch.cat([slot_tokens[:, seen:].to(device), pending[:, None].to(device), node_tokens], dim=1)
    positions = torch.cat([catch_pos, tree_pos], dim=1)
    node_valid = torch.arange(width, device=device)[None, :] < num_nodes[:, None]
    valid = torch.cat([slot_mask[:, seen:], node_valid.new_ones((b, 1)), node_valid], dim=1)

    q = catch_up + 1 + width
    visible = torch.zeros((b, q, q), dtype=torch.bool, device=device)
    causal = torch.ones((catch_up, catch_up), dtype=torch.bool, device=device).tril()
    visible[:, :catch_up, :catch_up] = causal[None] & valid[:, None, :catch_up]
    visible[:, catch_up:, :catch_up] = valid[:, None, :catch_up]
    visible[:, catch_up:, catch_up:] = ancestry(parents, num_nodes)
    visible |= torch.eye(q, dtype=torch.bool, device=device)[None]
    return VerifyBatch(tokens, positions, valid, visible, catch_up, node_tokens, parents, num_nodes)


@dataclass
class StepResult:
    """What one verify step committed, per row; handed to the committer, the stores and ``session.on_commit``."""

    path: torch.Tensor  # (B, m) long: committed columns in node space (0 = root, j + 1 = node j); row uses num_accepted + 1
    num_accepted: torch.Tensor  # (B,) long: accepted draft nodes
    next_token: torch.Tensor  # (B,) long: correction or bonus token (becomes pending)
    emitted: torch.Tensor  # (B, m) long: accepted draft tokens then next_token; row uses kept[b]
    kept: torch.Tensor  # (B,) long: tokens the committer kept (stops and max_length may cut)
    kept_slots: int  # KV slots every cache now holds (shared layout)
    log_weight: torch.Tensor  # (B,) float: 0 for exact rules; importance weights for aligned/SMC work
    target_top: torch.Tensor | None = None  # (B, N + 1, k) long: target's top-k tokens at every verified column


@dataclass
class TargetView:
    """Where each scored column sits, for verifier targets that depend on the prefix (grammar alignment)."""

    ids: torch.Tensor  # (B, T) long: committed tokens (left-padded prompt first); row i valid up to lengths[i]
    lengths: torch.Tensor  # (B,) long: committed length per row before this step
    batch: VerifyBatch  # the step's tree: column c >= 1 is node c - 1; column 0 is the root (pending)
    unmasked: torch.Tensor | None = None  # (B, N + 1, V) float: processed scores before the grammar mask (mask_last targets)
    log_allowed: torch.Tensor | None = None  # (B, N + 1) float: log grammar-allowed mass of softmax(unmasked); -inf: none


class VerifyTarget(Protocol):
    """The distribution drafts are verified against (and sampled from when none is accepted).

    ``mask_last``: the engine applies the user's processors before the grammar mask and shows the
    target the scores before the mask too (``TargetView.unmasked``): aligned targets need P without it.
    """

    mask_last: bool

    def probs(self, scores: torch.Tensor, view: TargetView) -> torch.Tensor:
        """(B, N + 1, V) target distribution at every verified column of ``scores`` (processed, masked)."""
        ...

    def commit(self, result: StepResult, own: torch.Tensor) -> torch.Tensor:
        """The step committed ``result`` (``own`` (B,): each row's own tokens, up to its stop);
        returns the per-row log-weight of what was committed (0 for exact rules). May learn from it."""
        ...


class SoftmaxTarget:
    """The default verifier target: softmax of the processed (grammar-masked) scores; weight 0."""

    mask_last = False

    def probs(self, scores: torch.Tensor, view: TargetView | None = None) -> torch.Tensor:
        return torch.softmax(scores, dim=-1)

    def commit(self, result: StepResult, own: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(result.log_weight)
