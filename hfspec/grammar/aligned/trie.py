"""The learned state of grammar-aligned sampling: a trie of sampled prefixes with ĉ estimates.

c(x) = P(a continuation of x under the LM completes a sentence of the grammar's language) is
what local masking ignores: masked decoding samples a ∝ P(a|x)·1[a allowed] while the target
Q(w) ∝ P(w)·1[w ∈ L] needs a ∝ P(a|x)·c(xa). The trie keeps, for every prefix it has seen,

  A(x)  the grammar-allowed mass Σ_{a allowed} P(a|x) (known once x was visited), and
  ĉ(x)  = U(x) + Σ_{explored a} P(a|x)·ĉ(xa),  U(x) = A(x) − Σ_{explored a} P(a|x),
        i.e. unexplored allowed children count 1,

so ĉ is an upper bound of c that only decreases as samples reveal dead mass (ASAp's estimate;
1 − ĉ is exactly the probability mass the trie has proven dead, which CARS-style exact rejection
subtracts). Fixed leaves: the stop token accepted by a complete grammar (ĉ = 1), and a prefix that
reached the length limit or whose finished text fails validation (ĉ = 0). Values can be tiny
(ĉ of a 10-token answer is often 1e-11) while A is not, so ĉ is recomputed as a sum of non-negative
terms along the changed path, never as A minus the dead mass (that difference cancels to noise),
and U is exactly 0 once every allowed child has been explored.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass


class Node:
    """One prefix. ``allowed`` None: never visited (ĉ = 1, no children)."""

    __slots__ = ("allowed", "num_allowed", "unexplored", "value", "fixed", "children", "parent", "p")

    def __init__(self, parent: Node | None = None, p: float = 1.0) -> None:
        self.allowed: float | None = None  # A(x)
        self.num_allowed = 0  # allowed tokens at x (U(x) = 0 once as many children are recorded)
        self.unexplored = 0.0  # U(x): allowed mass of the children not recorded yet
        self.value = 1.0  # ĉ(x)
        self.fixed = False  # a leaf whose ĉ is known exactly (complete: 1, dead: 0)
        self.children: dict[int, Node] = {}
        self.parent = parent
        self.p = p  # P(token | parent), the LM's own probability (processors applied, no mask)

    @property
    def visited(self) -> bool:
        return self.allowed is not None or self.fixed


class NodeBudget:
    """A memory bound shared by every trie of one ``GrammarAligned``: at most ``max_nodes`` nodes.

    When it is spent, new prefixes are simply not recorded: ĉ stays an upper bound (less is
    learned), and the exact method stays exact (it never relies on what was not recorded)."""

    def __init__(self, max_nodes: int) -> None:
        self.max_nodes = max_nodes
        self.used = 0

    @property
    def full(self) -> bool:
        return self.used >= self.max_nodes


@dataclass(frozen=True)
class Step:
    """One sampled position: the allowed mass at the prefix, the token taken and its probability."""

    allowed: float  # A(x) at the prefix the token was sampled at
    num_allowed: int  # grammar-allowed tokens there
    token: int
    p: float  # P(token | prefix), unmasked


class PrefixTrie:
    """The prefixes sampled after one prompt (one trie per prompt and sampling settings)."""

    def __init__(self, budget: NodeBudget) -> None:
        self.budget = budget
        self.root = Node()
        budget.used += 1

    # ------------------------------------------------------------------ reads
    @staticmethod
    def child(node: Node | None, token: int) -> Node | None:
        """The node of ``node`` + token, or None if it was never recorded."""
        return None if node is None else node.children.get(token)

    @staticmethod
    def explored(node: Node) -> tuple[list[int], list[float]]:
        """Tokens of ``node``'s recorded children and their ĉ (the others count 1)."""
        tokens = list(node.children)
        return tokens, [node.children[t].value for t in tokens]

    def nodes(self) -> Iterator[Node]:
        """Every node, parents before children."""
        stack = [self.root]
        while stack:
            node = stack.pop()
            yield node
            stack.extend(node.children.values())

    # ------------------------------------------------------------------ updates
    def visit(self, node: Node, allowed: float, num_allowed: int) -> None:
        """Record A(x) and the number of allowed tokens for a node seen for the first time (later
        visits change nothing)."""
        if node.visited:
            return
        node.allowed = min(max(allowed, 0.0), 1.0)
        node.num_allowed = num_allowed
        node.unexplored = node.allowed
        self._refresh(node)

    def extend(self, node: Node, token: int, p: float) -> Node | None:
        """The child ``node`` + token, created if new (None when the node budget is spent)."""
        child = node.children.get(token)
        if child is None and not node.fixed:
            if self.budget.full:
                return None
            child = node.children[token] = Node(node, min(max(p, 0.0), 1.0))
            self.budget.used += 1
            if node.allowed is not None:
                full = len(node.children) >= node.num_allowed
                node.unexplored = 0.0 if full else max(node.unexplored - child.p, 0.0)
        return child

    def fix(self, node: Node, value: float) -> None:
        """Make ``node`` a leaf of known ĉ: 1 (complete sentence) or 0 (dead: limit or invalid)."""
        node.fixed = True
        node.value = min(max(value, 0.0), 1.0)
        self._refresh(node.parent)

    def insert(self, start: Node, steps: list[Step]) -> Node | None:
        """Record a sampled continuation of ``start``; returns the node after the last step (None
        if the budget ran out on the way)."""
        node: Node | None = start
        for step in steps:
            if node is None or node.fixed:
                return None
            self.visit(node, step.allowed, step.num_allowed)
            node = self.extend(node, step.token, step.p)
        if node is not None:
            self._refresh(node)
        return node

    @staticmethod
    def _refresh(node: Node | None) -> None:
        """Recompute ĉ from ``node`` up to the root (sums of non-negative terms: no cancellation)."""
        while node is not None:
            if not node.fixed and node.allowed is not None:
                total = node.unexplored + sum(c.p * c.value for c in node.children.values())
                node.value = min(max(total, 0.0), 1.0)
            node = node.parent

    # ------------------------------------------------------------------ persistence
    def to_records(self) -> list[list]:
        """Flat records [parent index, token, p, allowed, num_allowed, fixed value or None], parents first."""
        index = {id(self.root): 0}
        root = self.root
        out = [[-1, -1, 1.0, root.allowed, root.num_allowed, root.value if root.fixed else None]]
        stack = [self.root]
        while stack:
            node = stack.pop()
            for token, child in node.children.items():
                index[id(child)] = len(out)
                out.append([index[id(node)], token, child.p, child.allowed, child.num_allowed,
                            child.value if child.fixed else None])
                stack.append(child)
        return out

    @classmethod
    def from_records(cls, records: list[list], budget: NodeBudget) -> PrefixTrie:
        """Rebuild a trie written by ``to_records``; ĉ is recomputed bottom-up."""
        trie = cls(budget)
        nodes = [trie.root]
        _, _, _, trie.root.allowed, trie.root.num_allowed, fixed = records[0]
        trie.root.fixed = fixed is not None
        for parent, token, p, allowed, num_allowed, fixed in records[1:]:
            node = Node(nodes[parent], p)
            node.allowed, node.num_allowed, node.fixed = allowed, num_allowed, fixed is not None
            nodes[parent].children[token] = node
            nodes.append(node)
        budget.used += len(records) - 1
        for node, record in zip(reversed(nodes), reversed(records), strict=True):
            if node.fixed:
                node.value = float(record[5])
            elif node.allowed is not None:
                explored = sum(c.p for c in node.children.values())
                full = len(node.children) >= node.num_allowed
                node.unexplored = 0.0 if full else max(node.allowed - explored, 0.0)
                total = node.unexplored + sum(c.p * c.value for c in node.children.values())
                node.value = min(max(total, 0.0), 1.0)
        return trie
