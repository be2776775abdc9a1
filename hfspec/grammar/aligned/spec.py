"""``hfspec.GrammarAligned``: the ``grammar=`` value for sampling from P conditioned on the grammar.

It wraps a grammar spec and owns the learned state (one prefix trie per prompt and sampling
settings) so that what one call learns speeds up the next, across calls and across
``num_return_sequences``. The state can be reset, is bounded (``max_nodes``) and can be saved and
loaded; a saved state remembers the grammar and the tokenizer it was learned with and refuses any
other before the model runs.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import pathlib
from dataclasses import dataclass, field
from typing import Any, Literal

from hfspec.exceptions import ConfigurationError, GrammarError
from hfspec.grammar.aligned.trie import NodeBudget, PrefixTrie
from hfspec.grammar.specs import GrammarSpec

Method = Literal["exact", "asap"]
METHODS = ("exact", "asap")
FORMAT = "hfspec-aligned-trie/1"
TrieKey = tuple[tuple[int, ...], int, str]  # (prompt ids without padding, new-token budget, sampling settings)


@dataclass
class AlignedStats:
    """What aligned sampling cost: attempts per accepted sample, and target forwards per row."""

    samples: int = 0  # accepted samples returned
    attempts: int = 0  # samples drawn (accepted + rejected)
    rounds: int = 0  # engine calls (a call re-draws only its rejected rows)
    target_forwards: int = 0  # batched verify forwards over all rounds
    row_forwards: int = 0  # (row, verify forward) pairs: what one row's samples cost
    rejected_weight: int = 0  # exact method: rejected by the acceptance draw
    rejected_dead: int = 0  # reached the length limit, a dead prefix, or failed validation

    @property
    def acceptance_rate(self) -> float:
        return self.samples / max(self.attempts, 1)

    @property
    def forwards_per_sample(self) -> float:
        """Target forwards one accepted sample cost, counting its rejected attempts."""
        return self.row_forwards / max(self.samples, 1)

    def add(self, other: AlignedStats) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class GrammarAligned:
    """Sample from Q(w) ∝ P(w)·1[w ∈ L] instead of the locally masked distribution.

    Pass it as ``grammar=``: ``model.generate(..., grammar=hfspec.GrammarAligned(spec, method="exact"),
    do_sample=True)``, with or without ``assistant_strategy`` (speculation is verified against the
    aligned target, so it never changes the law).

    Args:
        spec: the grammar (``hfspec.JSONSchema``, ``Regex``, ``EBNF``, ...).
        method: "exact" (default): every returned sample is exactly from Q; rejected attempts are
            re-drawn (CARS-style adaptive rejection: the dead mass the trie has proven is never
            proposed again, so acceptance rises with use). "asap": one sample per attempt, from
            ASAp's reweighted law, which converges to Q as the trie learns; cheaper, not exact.
        max_nodes: memory bound of the learned tries (all prompts together); ~200 bytes a node.
        max_rounds: the exact method re-draws rejected rows at most this many times per call
            before raising ``AlignmentError`` (the acceptance rate so far is in the message).
        learn: False uses what was learned (or loaded) and adds nothing: a fixed law for ASAp,
            a fixed proposal for the exact method (still exact).
    """

    spec: GrammarSpec
    method: Method = "exact"
    max_nodes: int = 1_000_000
    max_rounds: int = 64
    learn: bool = True
    stats: AlignedStats = field(default_factory=AlignedStats, init=False)
    last_call: AlignedStats = field(default_factory=AlignedStats, init=False)

    def __post_init__(self) -> None:
        if isinstance(self.spec, GrammarAligned) or not isinstance(self.spec, GrammarSpec):
            raise GrammarError(
                "GrammarAligned(spec) needs an hfspec grammar spec (hfspec.JSONSchema, Regex, EBNF, ...); "
                f"got {type(self.spec).__name__}."
            )
        if self.method not in METHODS:
            hint = (" Sequential Monte Carlo is not implemented in hfspec (see docs/aligned.md)."
                    if self.method == "smc" else "")
            raise ConfigurationError(f"method must be one of {METHODS}, got {self.method!r}.{hint}")
        if not (isinstance(self.max_nodes, int) and self.max_nodes >= 1):
            raise ConfigurationError(f"max_nodes must be a positive int, got {self.max_nodes!r}.")
        if not (isinstance(self.max_rounds, int) and self.max_rounds >= 1):
            raise ConfigurationError(f"max_rounds must be a positive int, got {self.max_rounds!r}.")
        self._budget = NodeBudget(self.max_nodes)
        self._tries: dict[TrieKey, PrefixTrie] = {}
        self._bound: tuple[str, str] | None = None  # (grammar, tokenizer) fingerprints of the learned state

    # ------------------------------------------------------------------ learned state
    @property
    def num_nodes(self) -> int:
        """Nodes held by every trie together (bounded by ``max_nodes``)."""
        return self._budget.used

    def reset(self) -> None:
        """Forget everything learned (statistics included)."""
        self._budget = NodeBudget(self.max_nodes)
        self._tries.clear()
        self._bound = None
        self.stats = AlignedStats()
        self.last_call = AlignedStats()

    def trie(self, key: TrieKey) -> PrefixTrie:
        """The trie for one prompt and sampling settings (created empty)."""
        trie = self._tries.get(key)
        if trie is None:
            trie = self._tries[key] = PrefixTrie(self._budget)
        return trie

    def bind(self, tokenizer: Any, vocab_size: int) -> None:
        """Tie the learned state to this grammar and tokenizer; raises GrammarError (before any model
        work) if it was learned or loaded with others."""
        found = (grammar_fingerprint(self.spec), tokenizer_fingerprint(tokenizer, vocab_size))
        if self._bound is None:
            self._bound = found
        elif self._bound[0] != found[0]:
            raise GrammarError(
                "This GrammarAligned state was learned for another grammar (fingerprint "
                f"{self._bound[0][:12]}, this spec is {found[0][:12]}); use a fresh GrammarAligned or reset()."
            )
        elif self._bound[1] != found[1]:
            raise GrammarError(
                "This GrammarAligned state was learned with another tokenizer or vocabulary width "
                f"(fingerprint {self._bound[1][:12]}, this call's is {found[1][:12]}); its probabilities "
                "do not apply. Use a fresh GrammarAligned or reset()."
            )

    def save(self, path: str | pathlib.Path) -> None:
        """Write the learned tries (gzip JSON) with the grammar/tokenizer fingerprints and the method."""
        if self._bound is None:
            raise ConfigurationError("Nothing learned yet: save() after at least one generate() call.")
        payload = {
            "format": FORMAT,
            "method": self.method,
            "grammar": self._bound[0],
            "tokenizer": self._bound[1],
            "tries": [
                {"prompt": list(key[0]), "budget": key[1], "sampling": key[2], "nodes": trie.to_records()}
                for key, trie in self._tries.items()
            ],
        }
        with gzip.open(pathlib.Path(path), "wt", encoding="utf-8") as handle:
            json.dump(payload, handle)

    @classmethod
    def load(cls, path: str | pathlib.Path, spec: GrammarSpec, **options: Any) -> GrammarAligned:
        """A GrammarAligned for ``spec`` holding the tries saved at ``path``.

        Raises GrammarError if they were learned for another grammar; the tokenizer is checked
        at the first call, before the model runs."""
        try:
            with gzip.open(pathlib.Path(path), "rt", encoding="utf-8") as handle:
                payload = json.load(handle)
        except (OSError, json.JSONDecodeError) as err:
            raise ConfigurationError(f"{path} is not a saved GrammarAligned state ({err}).") from err
        if payload.get("format") != FORMAT:
            raise ConfigurationError(f"{path} is not a saved GrammarAligned state (format {payload.get('format')!r}).")
        options.setdefault("method", payload["method"])
        aligned = cls(spec, **options)
        if payload["grammar"] != grammar_fingerprint(spec):
            raise GrammarError(
                f"{path} was learned for another grammar than {type(spec).__name__} given here "
                f"(fingerprint {payload['grammar'][:12]} vs {grammar_fingerprint(spec)[:12]})."
            )
        for entry in payload["tries"]:
            key = (tuple(entry["prompt"]), int(entry["budget"]), entry["sampling"])
            aligned._tries[key] = PrefixTrie.from_records(entry["nodes"], aligned._budget)
        aligned._bound = (payload["grammar"], payload["tokenizer"])
        return aligned

    def estimate(self, key: TrieKey) -> float:
        """ĉ at the root for ``key``: an upper bound of P(an unconstrained sample lies in the grammar)."""
        trie = self._tries.get(key)
        return 1.0 if trie is None else trie.root.value

    def __repr__(self) -> str:
        return f"GrammarAligned({self.spec!r}, method={self.method!r}, nodes={self.num_nodes})"


def grammar_fingerprint(spec: GrammarSpec) -> str:
    return hashlib.sha256(repr((type(spec).__name__, spec.cache_key())).encode()).hexdigest()


_TOKENIZER_FINGERPRINTS: dict[int, tuple[Any, str]] = {}


def tokenizer_fingerprint(tokenizer: Any, vocab_size: int) -> str:
    """sha256 of the vocabulary (token → id) and the lm-head width; cached per tokenizer object."""
    cached = _TOKENIZER_FINGERPRINTS.get(id(tokenizer))
    if cached is None or cached[0] is not tokenizer:
        vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
        digest = hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()
        cached = _TOKENIZER_FINGERPRINTS[id(tokenizer)] = (tokenizer, digest)
    return hashlib.sha256(f"{cached[1]}:{vocab_size}".encode()).hexdigest()


def sampling_fingerprint(processors: Any) -> str:
    """The logits processors' types and settings: P depends on them, so the tries are kept apart."""
    parts = []
    for processor in processors or []:
        settings = sorted(
            (k, v if not isinstance(v, float) or math.isfinite(v) else repr(v))
            for k, v in vars(processor).items()
            if isinstance(v, (int, float, str, bool, type(None)))
        )
        parts.append([type(processor).__name__, settings])
    return json.dumps(parts)
