"""Grammar-aligned sampling: draw from Q(w) ∝ P(w)·1[w ∈ L], not the locally masked law (docs/aligned.md)."""

from hfspec.grammar.aligned.spec import AlignedStats, GrammarAligned

__all__ = ["AlignedStats", "GrammarAligned"]
