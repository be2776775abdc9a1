"""CRANE: free reasoning first, then a grammar-constrained answer between delimiters.

Banerjee et al. 2025 ("CRANE: Reasoning with constrained LLM generation") show that masking the
*whole* output to a strict grammar hurts reasoning: the model can no longer think in free text
before committing to the answer. CRANE leaves the reasoning unconstrained and enforces the
grammar only on the answer, which the model opens with a start delimiter.

``Crane(answer, start, end)`` compiles to one xgrammar structural tag, so it runs under
``grammar=`` like any other spec: with every ``assistant_strategy``, jump-forward and
``on_incomplete``. The language is exactly::

    F start A end        F: any text not containing ``start``;  A: a sentence of ``answer``

and nothing may follow ``end`` but the stop token. See docs/crane.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from hfspec.exceptions import GrammarError, GrammarValidationError
from hfspec.grammar.specs import EBNF, JSON, GrammarSpec, JSONSchema, Lark, Regex

SUPPORTED = (JSONSchema, JSON, Regex, EBNF, Lark)
_SUPPORTED_NAMES = "JSONSchema, JSON, Regex, EBNF or Lark"


@dataclass(frozen=True, eq=False)
class Crane(GrammarSpec):
    """Unconstrained text, then ``start``, an answer conforming to ``answer``, then ``end``.

    Only the answer is constrained, so the model may reason freely first (CRANE). The first
    ``start`` the model writes opens the answer (the free text cannot contain ``start``); after
    ``end`` the grammar is complete and only the stop token is allowed, so one answer per output.

    Args:
        answer: the answer's grammar: an ``hfspec.JSONSchema``, ``JSON``, ``Regex``, ``EBNF`` or
            ``Lark`` (not a ``StructuralTag`` or another ``Crane``: the answer is one value).
        start: the delimiter that opens the answer (non-empty).
        end: the delimiter that closes it (non-empty, different from ``start``).
        max_reasoning_chars: if set, the free text may have at most this many characters; then
            ``start`` is the only continuation (budget forcing: a long-winded model still answers
            within ``max_new_tokens``). None (default): unbounded. Characters, not tokens:
            xgrammar 0.2.8's token budget (``any_text.max_tokens``) gives masks that depend on
            the matcher's history, not only on the tokens, which speculation cannot verify exactly.
        tokenizer: as for every spec; defaults to ``answer``'s tokenizer when only it has one.
    """

    answer: GrammarSpec
    start: str = "<answer>"
    end: str = "</answer>"
    max_reasoning_chars: int | None = None

    def __post_init__(self) -> None:
        answer = self.answer
        if isinstance(answer, Crane):
            raise GrammarError("Crane cannot nest another Crane: the answer is one value; pass the inner Crane's answer.")
        if not isinstance(answer, GrammarSpec):
            raise GrammarError(
                f"Crane(answer=...) must be an hfspec grammar spec ({_SUPPORTED_NAMES}); got {type(answer).__name__}."
            )
        if not isinstance(answer, SUPPORTED):
            raise GrammarError(
                f"Crane supports answers given as {_SUPPORTED_NAMES}; got {type(answer).__name__} "
                "(a StructuralTag already mixes free text and structure: use it alone instead of Crane)."
            )
        for name in ("start", "end"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise GrammarError(f"Crane({name}=...) must be a non-empty string, got {value!r}.")
        if self.start == self.end:
            raise GrammarError(f"Crane needs different start and end delimiters, got {self.start!r} for both.")
        budget = self.max_reasoning_chars
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 0):
            raise GrammarError(f"Crane(max_reasoning_chars=...) must be None or an integer >= 0, got {budget!r}.")
        if answer.tokenizer is not None:
            if self.tokenizer is None:
                object.__setattr__(self, "tokenizer", answer.tokenizer)  # frozen: set once, here
            elif self.tokenizer is not answer.tokenizer and self.tokenizer.get_vocab() != answer.tokenizer.get_vocab():
                raise GrammarError("Crane and its answer spec were given different tokenizers; pass one.")

    # ------------------------------------------------------------------ compilation
    def answer_format(self) -> dict:
        """The answer as an xgrammar structural-tag content format (same language as the spec alone).

        xgrammar's ``json_schema`` content is strict with any whitespace, so other JSONSchema
        settings, the built-in JSON grammar, a non-``root`` EBNF start and Lark go through
        xgrammar's own conversion to EBNF (``grammar`` content) instead.
        """
        from hfspec.grammar.compile import _xgr

        answer = self.answer
        if isinstance(answer, JSONSchema):
            schema = answer.json_schema
            if answer.any_whitespace and answer.indent is None:
                return {"type": "json_schema", "json_schema": schema, "any_order": answer.any_order}
            grammar = _xgr().Grammar.from_json_schema(
                json.dumps(schema), any_whitespace=answer.any_whitespace, indent=answer.indent,
                any_order=answer.any_order, strict_mode=True,
            )
            return {"type": "grammar", "grammar": str(grammar)}
        if isinstance(answer, JSON):
            return {"type": "grammar", "grammar": str(_xgr().Grammar.builtin_json_grammar())}
        if isinstance(answer, Regex):
            return {"type": "regex", "pattern": answer.pattern}
        if isinstance(answer, EBNF):
            if answer.root == "root":
                return {"type": "grammar", "grammar": answer.grammar}
            return {"type": "grammar", "grammar": str(_xgr().Grammar.from_ebnf(answer.grammar, root_rule_name=answer.root))}
        return {"type": "grammar", "grammar": str(_xgr().Grammar.from_lark(answer.grammar))}  # Lark

    @property
    def structural_tag(self) -> dict:
        """The xgrammar structural tag (``response_format`` form; also usable in vLLM / SGLang).

        ``sequence[any_text(excludes=[start]), tag(start, answer, end)]``. Not ``triggered_tags``:
        in xgrammar 0.2.8 ``at_least_one=True`` forbids text before the first tag, and without it
        free text alone would be a complete output.
        """
        tag = {"type": "tag", "begin": self.start, "content": self.answer_format(), "end": self.end}
        free: dict[str, Any] = {"type": "any_text", "excludes": [self.start]}
        if self.max_reasoning_chars is not None:
            free["max_chars"] = self.max_reasoning_chars
        return {"type": "structural_tag", "format": {"type": "sequence", "elements": [free, tag]}}

    def cache_key(self) -> tuple:
        # the answer's unenforced mode is in the key: compile_with refuses 'error' schemas, and a
        # cached compilation under 'validate' must not let one through
        return ("crane", self.start, self.end, self.max_reasoning_chars, self.answer.cache_key(),
                getattr(self.answer, "unenforced", None))

    def compile_with(self, compiler):
        from hfspec.grammar.compile import check_enforceable

        check_enforceable(self.answer)  # JSONSchema(unenforced="error") is refused inside Crane too
        return compiler.compile_structural_tag(json.dumps(self.structural_tag))

    # ------------------------------------------------------------------ reading outputs
    def split(self, text: str) -> tuple[str, str]:
        """(free text, answer text) of a finished output; raises GrammarValidationError without delimiters.

        The answer starts after the *first* ``start`` (the free text cannot contain one) and ends
        before the *final* ``end`` (nothing follows it), so an answer that itself contains a
        delimiter string is still cut out exactly. Free text over ``max_reasoning_chars`` raises too.
        """
        at = text.find(self.start)
        if at < 0:
            raise GrammarValidationError(f"Crane: no start delimiter {self.start!r} in the output: {text[:200]!r}")
        if self.max_reasoning_chars is not None and at > self.max_reasoning_chars:
            raise GrammarValidationError(
                f"Crane: the free text has {at} characters, over max_reasoning_chars={self.max_reasoning_chars}."
            )
        body = text[at + len(self.start):]
        if not body.endswith(self.end):
            raise GrammarValidationError(
                f"Crane: the output does not end with the end delimiter {self.end!r}: {text[-200:]!r}"
            )
        return text[:at], body[: len(body) - len(self.end)]

    def answer_text(self, text: str) -> str:
        """The answer substring between the delimiters (see ``split``)."""
        return self.split(text)[1]

    def parse(self, text: str) -> Any:
        """The answer's value, parsed by the answer spec; raises GrammarValidationError if it does not conform."""
        return self.answer.parse(self.answer_text(text))

    def validation_errors(self, text: str) -> list[str]:
        """Missing delimiters, else the answer spec's unenforced-keyword violations of the answer."""
        try:
            answer = self.answer_text(text)
        except GrammarValidationError as err:
            return [str(err)]
        return self.answer.validation_errors(answer)
