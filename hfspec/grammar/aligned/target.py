"""The aligned verifier target: what drafts are verified against, and sampled from, per row.

At a verified column whose prefix x the trie knows, the target is

  Q̂(a | x) = P(a|x)·1[a allowed]·ĉ(xa) / Z(x),   Z(x) = Σ_a P(a|x)·1[a allowed]·ĉ(xa),

(ĉ = 1 for unexplored children); at a prefix the trie has not seen it is the masked P. Speculative
verification against Q̂ at every column samples exactly the sequential law of Q̂ (the usual
speculative argument with Q̂ as the target), so speculation never changes what aligned sampling
gives. Each committed position also adds log Z(x) − log ĉ(x) to the row's log-weight
(``StepResult.log_weight``): 0 where the trie knew x, log A(x) where it did not. The exact method
accepts a finished sample with probability exp(total log-weight) = Π_new A(x): rejection sampling
of P restricted to what the trie has not proven dead, so every accepted sample is exactly from Q.
The trie is read as it was when the call began (a snapshot) in the exact method; ASAp learns after
every commit.
"""

from __future__ import annotations

import math

import torch

from hfspec.grammar.aligned.trie import Node, PrefixTrie, Step
from hfspec.step import StepResult, TargetView


class AlignedTarget:
    """One engine call's aligned target (``hfspec.step.VerifyTarget``), one trie per row."""

    mask_last = True  # P is the model's own processed distribution; the grammar masks after it

    def __init__(
        self,
        tries: list[PrefixTrie],
        stop_token_ids: list[int],
        *,
        live: bool,
        log_u: torch.Tensor | None,
        learn: bool = True,
        prompt_len: int = 0,
    ) -> None:
        """tries: row i's trie (rows with the same prompt share one); live: learn after every
        commit (ASAp) instead of at ``finish`` (exact); log_u (B,): log of each row's uniform
        acceptance draw (exact), None = never reject on weight (ASAp); learn: False reads the
        tries and never changes them; prompt_len: the ids column where generation starts (the tries' root)."""
        b = len(tries)
        self.tries = tries
        self.stops = set(stop_token_ids)
        self.live = live and learn
        self.learn = learn
        self.prompt_len = prompt_len
        self.log_u = log_u
        self.cursor: list[Node | None] = [t.root for t in tries]  # node of the committed prefix
        self.anchor: list[Node | None] = [t.root for t in tries]  # where ``pending`` steps start
        self.pending: list[list[Step]] = [[] for _ in range(b)]
        self.log_weight = torch.zeros(b, dtype=torch.float64)  # (B,) running total per row
        self.rejected = torch.zeros(b, dtype=torch.bool)  # (B,) the exact method's coin failed, or A = 0
        self.complete = torch.zeros(b, dtype=torch.bool)  # (B,) the row committed a stop token
        self.generated = torch.zeros(b, dtype=torch.long)  # (B,) own tokens committed per row
        self._step: tuple | None = None  # the last probs() call's columns, read by commit()

    # ------------------------------------------------------------------ VerifyTarget
    def probs(self, scores: torch.Tensor, view: TargetView) -> torch.Tensor:
        """(B, C, V) Q̂ at every column of ``scores`` (processed, masked; ``view.unmasked`` before the mask)."""
        assert view.unmasked is not None and view.log_allowed is not None, "mask_last target without P"
        b, c, v = scores.shape
        log_allowed = view.log_allowed.double()  # (B, C) log A(x); -inf: nothing grammatical survived
        probs = torch.softmax(scores.double(), dim=-1)  # masked P (float64: ĉ spans many decades)
        num_allowed = torch.where(torch.isfinite(log_allowed), torch.isfinite(scores).sum(dim=-1), 0)  # (B, C)
        log_inc = log_allowed.clone()  # (B, C): log Z(x) − log ĉ(x) (new prefixes: log A(x))
        nodes: list[list[Node | None]] = []
        tokens_of, parents_of = view.batch.node_tokens.tolist(), view.batch.parents.tolist()
        num_nodes = view.batch.num_nodes.tolist()
        for row in range(b):
            columns: list[Node | None] = [self.cursor[row]]  # column j + 1 is node j: its parent's column + its token
            for j in range(min(c - 1, num_nodes[row])):
                columns.append(PrefixTrie.child(columns[parents_of[row][j] + 1], tokens_of[row][j]))
            for column, node in enumerate(columns):
                if node is not None and node.value == 0.0:  # proven dead: Q̂ never gets here from the parent
                    log_inc[row, column] = -math.inf
                    continue
                if node is None or node.allowed is None or not node.children:
                    if node is not None and node.fixed:
                        log_inc[row, column] = 0.0
                    elif node is not None and node.allowed is not None:  # known, no child explored: U = A
                        log_inc[row, column] = log_allowed[row, column] - math.log(node.value)
                    continue
                tokens, values = PrefixTrie.explored(node)
                idx = torch.tensor(tokens, device=probs.device)
                probs[row, column, idx] *= torch.tensor(values, dtype=probs.dtype, device=probs.device)
                total = float(probs[row, column].sum())  # Σ of non-negative terms: accurate however small
                if total <= 0.0:  # every allowed child proven dead: unreachable under Q̂ from the parent
                    log_inc[row, column] = -math.inf
                    probs[row, column] = torch.softmax(scores[row, column].double(), dim=-1)
                    continue
                probs[row, column] /= total
                log_inc[row, column] = log_allowed[row, column] + math.log(total) - math.log(node.value)
            nodes.append(columns)
        log_p = torch.log_softmax(view.unmasked, dim=-1)  # (B, C, V) the LM's own P (processors, no mask)
        self._step = (log_p, log_allowed, num_allowed, log_inc, nodes)
        return probs.to(scores.dtype)  # normalised: float32 holds Q̂ fine

    def commit(self, result: StepResult, own: torch.Tensor) -> torch.Tensor:
        """Add the committed positions' log-weight, remember what was sampled, decide rejections."""
        assert self._step is not None, "commit() before probs(): the call must sample (greedy is refused)"
        log_p, log_allowed, num_allowed, log_inc, nodes = self._step
        b = len(self.tries)
        step_weight = torch.zeros(b, dtype=torch.float64)
        path, emitted = result.path.tolist(), result.emitted.tolist()
        for row, count in enumerate(own.tolist()):
            for i in range(count):
                column, token = path[row][i], emitted[row][i]
                allowed = math.exp(float(log_allowed[row, column]))
                p = math.exp(float(log_p[row, column, token]))
                step_weight[row] += float(log_inc[row, column])
                self.pending[row].append(Step(allowed, int(num_allowed[row, column]), token, p))
                self.cursor[row] = PrefixTrie.child(nodes[row][column] if column < len(nodes[row]) else None, token)
                if token in self.stops:
                    self.complete[row] = True
            self.generated[row] += count
            if self.live and count:
                self._flush(row)
        self.log_weight += step_weight
        self.rejected |= torch.isneginf(self.log_weight)
        if self.log_u is not None:
            self.rejected |= self.log_weight < self.log_u
        return step_weight.to(result.log_weight.dtype)

    def draft_reweight(
        self, ids: torch.Tensor, lengths: torch.Tensor, extra: torch.Tensor, scores: torch.Tensor
    ) -> torch.Tensor:
        """The draft's masked scores (B, n, V) plus log ĉ of the children the trie knows, at every
        drafted position (prefixes as in ``PrefixProcessor``): q moves towards Q̂, so more drafts are
        accepted. q is still exactly what the draft samples from, so the law does not change."""
        b, n, _ = scores.shape
        offset = extra.shape[1] - (n - 1)
        rows, lens = extra.tolist(), lengths.tolist()
        out = None
        for row in range(b):
            start = self.prompt_len + int(self.generated[row])
            node = self.cursor[row]
            if node is None or lens[row] < start:
                continue
            node = self._walk(node, ids[row, start : lens[row]].tolist() + rows[row][:offset])
            for j in range(n):
                if j > 0:
                    node = PrefixTrie.child(node, rows[row][offset + j - 1])
                if node is None:
                    break
                if node.allowed is None or not node.children:
                    continue
                tokens, values = PrefixTrie.explored(node)
                out = scores.clone() if out is None else out
                column = out[row, j]
                column[tokens] += torch.tensor([_log(x) for x in values], dtype=column.dtype, device=column.device)
                if not bool(torch.isfinite(column).any()):  # every known child dead: keep the masked law
                    out[row, j] = scores[row, j]
        return scores if out is None else out

    # ------------------------------------------------------------------ after the call
    def finish(self, budget: int, invalid: list[bool]) -> torch.Tensor:
        """Record every row's sample; mark dead ends; (B,) bool: rows whose sample is accepted.

        budget: new tokens a row may take (a row that used them all without completing is dead at
        this horizon); invalid[i]: row i completed but its text fails validation (dead too)."""
        for row in range(len(self.tries)):
            last = self._flush(row)
            if last is None or not self.learn:
                continue
            if self.complete[row] and invalid[row]:
                self.tries[row].fix(last, 0.0)
            elif self.complete[row]:
                self.tries[row].fix(last, 1.0)
            elif int(self.generated[row]) >= budget:
                self.tries[row].fix(last, 0.0)
        invalid_t = torch.tensor(invalid, dtype=torch.bool)
        return self.complete & ~invalid_t & ~self.rejected

    def _flush(self, row: int) -> Node | None:
        """Insert the row's pending steps into its trie; returns the node they end at."""
        anchor = self.anchor[row]
        if anchor is None or not self.learn:
            self.pending[row].clear()
            return None
        last = self.tries[row].insert(anchor, self.pending[row])
        self.pending[row].clear()
        self.anchor[row] = last
        if self.live:
            self.cursor[row] = last
        return last

    @staticmethod
    def _walk(node: Node | None, tokens: list[int]) -> Node | None:
        for token in tokens:
            node = PrefixTrie.child(node, token)
            if node is None:
                return None
        return node


def _log(value: float) -> float:
    return math.log(value) if value > 0.0 else -math.inf
