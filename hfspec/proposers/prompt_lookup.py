"""Prompt lookup (LLMA / PLD): draft the tokens that followed the current suffix earlier on.

Match rule, chosen by replaying real Qwen2.5-Coder outputs (docs/design.md, "Prompt lookup"):
the longest suffix n-gram, at least ``min_ngram`` (2) long, that occurs earlier in prompt+output.
Among its occurrences, take the one that continues the previous step's copy (LLMA's copy
pointer: a model editing code copies the prompt in order), else the earliest one. One-token
matches are mostly coincidences (" =", "\\n"), and each wrong draft costs a verify position.
Proposals are deterministic, so acceptance uses the one-hot rule (exact).

With ``num_branches > 1`` a step proposes several continuations as one token tree (a trie:
identical prefixes share nodes), verified by one target forward: the chain's continuation
first, then the other earlier occurrences of the same suffix n-gram (latest first: repetitive
outputs loop over their recent past), then those of shorter n-grams (down to ``min_ngram``).
The tree has at most ``num_tokens`` nodes, kept breadth first (``hfspec.tree.trie``), so each
branch gets a share of the budget. After a step the copy pointer follows the branch that was
accepted.
"""

from __future__ import annotations

import torch
from transformers import GenerationConfig, PreTrainedModel

from hfspec.exceptions import ConfigurationError
from hfspec.proposers.base import Proposal, SessionContext, StepView
from hfspec.step import StepResult
from hfspec.tree import trie


def find_continuation(
    seq: torch.Tensor, max_ngram: int, min_ngram: int, num_tokens: int, prefer: int | None = None
) -> tuple[torch.Tensor, int | None]:
    """Tokens after the best earlier occurrence of ``seq``'s suffix, and where they start (pure).

    ``prefer``: index in ``seq`` where the previous copy would continue; used if it matches.
    Returns an empty tensor and None when no n-gram of length >= ``min_ngram`` matches.
    """
    length = seq.shape[0]
    for n in range(min(max_ngram, length - 1), min_ngram - 1, -1):
        windows = seq[:-1].unfold(0, n, 1)  # every n-gram that has at least one token after it
        starts = (windows == seq[-n:]).all(dim=1).nonzero().squeeze(1)
        if starts.numel() == 0:
            continue
        sticky = prefer is not None and bool((starts == prefer - n).any())
        source = prefer if sticky else int(starts[0]) + n
        return seq[source : source + num_tokens], source
    return seq[:0], None


def find_continuations(
    seq: torch.Tensor,
    max_ngram: int,
    min_ngram: int,
    num_tokens: int,
    num_branches: int,
    prefer: int | None = None,
) -> list[tuple[list[int], int]]:
    """Up to ``num_branches`` distinct continuations of ``seq``'s suffix, best first, with their sources (pure).

    The first is ``find_continuation``'s; then the other occurrences of the longest matching
    n-gram, latest first, then those of shorter n-grams (>= ``min_ngram``). A continuation that
    repeats (or is a prefix of) an earlier one is skipped: it would add no node to the tree.
    """
    first, source = find_continuation(seq, max_ngram, min_ngram, num_tokens, prefer)
    if source is None:
        return []
    found = [(first.tolist(), source)]
    length = seq.shape[0]
    for n in range(min(max_ngram, length - 1), min_ngram - 1, -1):
        if len(found) >= num_branches:
            break
        windows = seq[:-1].unfold(0, n, 1)
        starts = (windows == seq[-n:]).all(dim=1).nonzero().squeeze(1).tolist()
        for start in reversed(starts):
            if len(found) >= num_branches:
                break
            tokens = seq[start + n : start + n + num_tokens].tolist()
            if not any(other[: len(tokens)] == tokens for other, _ in found):
                found.append((tokens, start + n))
    return found


class PromptLookup:
    """Speculate by copying from the prompt and the output so far (no draft model).

    Args:
        num_tokens: most tokens drafted per step. 7 drafts = 8 verify positions, the cheapest
            multi-position verify measured on 2-core CPUs (docs/design.md).
        max_ngram, min_ngram: suffix lengths tried for a match, longest first.
        num_branches: most continuations proposed per step. 1 (the default) proposes one chain;
            more propose a token tree of at most ``num_tokens`` nodes holding that many distinct
            continuations (module docstring).
    """

    def __init__(
        self, num_tokens: int = 7, *, max_ngram: int = 3, min_ngram: int = 2, num_branches: int = 1
    ) -> None:
        if not isinstance(num_tokens, int) or isinstance(num_tokens, bool) or num_tokens < 1:
            raise ConfigurationError(f"PromptLookup(num_tokens=...) must be an int >= 1, got {num_tokens!r}.")
        if not (isinstance(min_ngram, int) and isinstance(max_ngram, int) and 1 <= min_ngram <= max_ngram):
            raise ConfigurationError(
                f"PromptLookup needs 1 <= min_ngram <= max_ngram, got min_ngram={min_ngram!r}, max_ngram={max_ngram!r}."
            )
        if not isinstance(num_branches, int) or isinstance(num_branches, bool) or num_branches < 1:
            raise ConfigurationError(f"PromptLookup(num_branches=...) must be an int >= 1, got {num_branches!r}.")
        self.num_tokens, self.max_ngram, self.min_ngram = num_tokens, max_ngram, min_ngram
        self.num_branches = num_branches

    @property
    def proposes_trees(self) -> bool:
        """Whether proposals are token trees (``num_branches > 1``) rather than chains (``JumpForward`` reads it)."""
        return self.num_branches > 1

    def __repr__(self) -> str:
        branches = f", num_branches={self.num_branches}" if self.num_branches > 1 else ""
        return (
            f"PromptLookup(num_tokens={self.num_tokens}, max_ngram={self.max_ngram}, "
            f"min_ngram={self.min_ngram}{branches})"
        )

    def validate(self, target: PreTrainedModel, generation_config: GenerationConfig) -> None:
        """Model-free: works for any target."""

    def start(self, ctx: SessionContext) -> _LookupSession | _TreeLookupSession:
        if self.num_branches == 1:
            return _LookupSession(self, ctx.batch_size)
        return _TreeLookupSession(self, ctx.batch_size)


class _LookupSession:
    """Per call: remembers, per row, where its last copy came from and how long the row was."""

    def __init__(self, strategy: PromptLookup, batch_size: int) -> None:
        self.s = strategy
        self.source: list[int | None] = [None] * batch_size
        self.length: list[int] = [0] * batch_size

    def propose(self, view: StepView) -> Proposal:
        batch = view.ids.shape[0]
        found = []
        for row in range(batch):
            start, end = int(view.starts[row]), int(view.lengths[row])
            budget = min(self.s.num_tokens, int(view.max_drafts[row]))
            # the copy pointer advances by however many tokens the row committed since last step
            prefer = None if self.source[row] is None else self.source[row] + end - self.length[row]
            tokens, source = (
                find_continuation(view.ids[row, start:end], self.s.max_ngram, self.s.min_ngram, budget, prefer)
                if budget
                else (view.ids[row, :0], None)
            )
            self.source[row], self.length[row] = source, end
            found.append(tokens)
        lengths = torch.tensor([len(f) for f in found], dtype=torch.long)
        ids = view.ids.new_zeros((batch, int(lengths.max()) if batch else 0))
        for row, tokens in enumerate(found):
            ids[row, : len(tokens)] = tokens
        return Proposal(ids=ids, lengths=lengths)

    def on_commit(self, result) -> None:
        """Nothing cached; the copy pointer is advanced from the row lengths in ``propose``."""


class _TreeLookupSession:
    """Per call, ``num_branches > 1``: one trie of continuations per row; the copy pointer follows
    the accepted branch."""

    def __init__(self, strategy: PromptLookup, batch_size: int) -> None:
        self.s = strategy
        self.source: list[int | None] = [None] * batch_size
        self.length: list[int] = [0] * batch_size
        self.branches: list[list[int]] = [[] for _ in range(batch_size)]  # sources of this step's branches
        self.owners: list[list[int]] = [[] for _ in range(batch_size)]  # branch index of each node

    def propose(self, view: StepView) -> Proposal:
        batch = view.ids.shape[0]
        trees = []
        for row in range(batch):
            start, end = int(view.starts[row]), int(view.lengths[row])
            budget = min(self.s.num_tokens, int(view.max_drafts[row]))
            prefer = None if self.source[row] is None else self.source[row] + end - self.length[row]
            found = (
                find_continuations(
                    view.ids[row, start:end], self.s.max_ngram, self.s.min_ngram, budget, self.s.num_branches, prefer
                )
                if budget
                else []
            )
            tokens, parents, owners = trie([tokens for tokens, _ in found], budget)
            self.branches[row] = [source for _, source in found]
            self.owners[row] = owners
            self.source[row] = found[0][1] if found else None
            self.length[row] = end
            trees.append((tokens, parents))
        lengths = torch.tensor([len(tokens) for tokens, _ in trees], dtype=torch.long)
        width = int(lengths.max()) if batch else 0
        ids = view.ids.new_zeros((batch, width))
        parents = (torch.arange(width) - 1).expand(batch, width).clone()  # padding nodes: chain layout
        for row, (tokens, row_parents) in enumerate(trees):
            ids[row, : len(tokens)] = torch.tensor(tokens, dtype=ids.dtype)
            parents[row, : len(tokens)] = torch.tensor(row_parents, dtype=torch.long)
        return Proposal(ids=ids, lengths=lengths, parents=parents.to(ids.device))

    def on_commit(self, result: StepResult) -> None:
        """Point each row's copy at the branch its deepest accepted node belongs to."""
        accepted = result.num_accepted.tolist()
        for row, n_acc in enumerate(accepted):
            if n_acc > 0 and self.owners[row]:
                node = int(result.path[row, n_acc]) - 1
                self.source[row] = self.branches[row][self.owners[row][node]]
