"""Token trees as tensors: parents → ancestry, depths, positions, per-node paths (pure functions).

Convention shared by proposers, acceptance and the verify batch: a row has N draft nodes
(padded); ``parents[b, j]`` is the parent node of node j, ``-1`` for the root (the last committed
token, "pending"). Nodes are topologically ordered (``parents[b, j] < j``). A chain is
``parents[b, j] = j - 1``. ``num_nodes[b]`` nodes are real; the rest are padding.
In the verify step the root sits in column 0 and node j in column j + 1.
"""

from __future__ import annotations

import torch


def chain_parents(batch: int, n: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(B, N) parents of a chain: node j hangs under node j - 1 (node 0 under the root)."""
    return (torch.arange(n, device=device) - 1).expand(batch, n).clone()


def is_chain(parents: torch.Tensor) -> bool:
    """True when every row is the chain layout (padding nodes included)."""
    return bool((parents == chain_parents(*parents.shape, device=parents.device)).all())


def ancestry(parents: torch.Tensor, num_nodes: torch.Tensor) -> torch.Tensor:
    """(B, N+1, N+1) bool: ``[b, i, j]`` is True when column j is column i or one of its ancestors.

    Column 0 is the root, column j + 1 node j. Padding nodes see only themselves (their
    outputs are discarded; attending to something keeps softmax finite).
    """
    b, n = parents.shape
    device = parents.device
    anc = torch.eye(n + 1, dtype=torch.bool, device=device).expand(b, n + 1, n + 1).clone()
    valid = torch.arange(n, device=device)[None, :] < num_nodes[:, None].to(device)  # (B, N)
    for j in range(n):  # parents come first, so each row's ancestry is its parent's plus itself
        parent_col = (parents[:, j] + 1).clamp(0, n)  # (B,)
        inherited = anc[torch.arange(b, device=device), parent_col]  # (B, N+1)
        anc[:, j + 1] |= inherited & valid[:, j : j + 1]
    return anc


def depths(parents: torch.Tensor, num_nodes: torch.Tensor) -> torch.Tensor:
    """(B, N) depth of each node (root's children: 1); padding nodes get 1."""
    return ancestry(parents, num_nodes)[:, 1:, 1:].sum(dim=-1)


def node_positions(root_position: torch.Tensor, parents: torch.Tensor, num_nodes: torch.Tensor) -> torch.Tensor:
    """(B, N+1) position ids of the root and each node: root position + depth (padding: root's)."""
    d = depths(parents, num_nodes)
    valid = torch.arange(parents.shape[1], device=parents.device)[None, :] < num_nodes[:, None]
    d = torch.where(valid, d, torch.zeros_like(d))
    return root_position[:, None] + torch.cat([d.new_zeros((d.shape[0], 1)), d], dim=1)


def path_tokens(tokens: torch.Tensor, parents: torch.Tensor, num_nodes: torch.Tensor, column: int) -> list[list[int]]:
    """Per row, the draft tokens from the root down to ``column`` (0 = root: empty), root excluded."""
    out = []
    for row in range(tokens.shape[0]):
        path: list[int] = []
        node = column - 1
        if node >= int(num_nodes[row]):
            out.append(path)
            continue
        while node >= 0:
            path.append(int(tokens[row, node]))
            node = int(parents[row, node])
        out.append(path[::-1])
    return out
