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


def trie(branches: list[list[int]], budget: int) -> tuple[list[int], list[int], list[int]]:
    """Merge token sequences (best first) into one tree of at most ``budget`` nodes (pure).

    Identical prefixes share nodes (a trie). When the trie has more nodes than ``budget``, nodes
    are kept breadth first (by depth, then by the rank of the best branch through them), so every
    kept node's parent is kept and each branch gets a share of the budget. Returns per node, in
    topological order: its token, its parent (-1 = root) and ``owner``, the index of the best
    branch through it (the branch a proposer should follow when that node is accepted).
    A single branch gives a chain (parents j - 1).
    """
    nodes: dict[tuple[int, ...], tuple[int, int]] = {}  # path -> (depth, owner); first writer owns
    for rank, branch in enumerate(branches):
        for end in range(1, len(branch) + 1):
            nodes.setdefault(tuple(branch[:end]), (end, rank))
    kept = sorted(nodes, key=lambda path: nodes[path])[: max(budget, 0)]
    index = {path: j for j, path in enumerate(kept)}
    tokens = [path[-1] for path in kept]
    parents = [index[path[:-1]] if len(path) > 1 else -1 for path in kept]
    owners = [nodes[path][1] for path in kept]
    return tokens, parents, owners
