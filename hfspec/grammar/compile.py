"""Compile specs with xgrammar, once per (tokenizer, vocabulary width, grammar).

Compiling a JSON schema costs milliseconds to seconds and its token masks are what xgrammar
precomputes, so both the per-tokenizer ``GrammarCompiler`` and each ``CompiledGrammar`` are
cached here. xgrammar raises bare ``RuntimeError`` with C++ locations; every failure leaves
this module as a ``GrammarError`` that says which grammar and why.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from typing import Any

from hfspec.exceptions import GrammarError, UnenforcedSchemaError
from hfspec.grammar.specs import JSON, GrammarSpec, JSONSchema

_MAX_TOKENIZERS = 8
_MAX_GRAMMARS = 256
_compilers: OrderedDict[tuple, tuple[Any, Any, Any]] = OrderedDict()  # key -> (tokenizer kept alive, compiler, info)
_prefix_tokens: dict[tuple, frozenset[int]] = {}  # key -> ids of tokens that prefix a longer token
_compiled: OrderedDict[tuple, Any] = OrderedDict()
_token_order: dict[tuple, Any] = {}  # key -> per-token search data (_TokenOrder), see _check_completable


def _xgr():
    try:
        import xgrammar
    except ImportError as err:
        raise GrammarError('grammar= needs xgrammar: pip install "hfspec[grammar]"') from err
    return xgrammar


def tokenizer_key(tokenizer: Any, vocab_size: int) -> tuple:
    return (id(tokenizer), int(vocab_size))


def compiler_for(tokenizer: Any, vocab_size: int):
    """The cached ``xgrammar.GrammarCompiler`` for this tokenizer and lm-head width."""
    return _compiler_entry(tokenizer, vocab_size)[1]


def _compiler_entry(tokenizer: Any, vocab_size: int) -> tuple[Any, Any, Any]:
    """(tokenizer, compiler, TokenizerInfo), cached per tokenizer and lm-head width."""
    key = tokenizer_key(tokenizer, vocab_size)
    if key in _compilers:
        _compilers.move_to_end(key)
        return _compilers[key]
    xgr = _xgr()
    if len(tokenizer) > vocab_size:
        raise GrammarError(
            f"The tokenizer has {len(tokenizer)} tokens but the model's vocabulary is {vocab_size} wide: "
            "the grammar's tokenizer is not this model's. Pass the model's own tokenizer."
        )
    try:
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size)
    except Exception as err:  # xgrammar rejects tokenizers it cannot read
        raise GrammarError(f"xgrammar cannot read tokenizer {type(tokenizer).__name__}: {err}") from err
    compiler = xgr.GrammarCompiler(info, max_threads=1)
    _compilers[key] = (tokenizer, compiler, info)
    if len(_compilers) > _MAX_TOKENIZERS:
        old, _ = _compilers.popitem(last=False)
        _prefix_tokens.pop(old, None)
        _token_order.pop(old, None)
    return _compilers[key]


def prefix_tokens(tokenizer: Any, vocab_size: int) -> frozenset[int]:
    """Ids of tokens whose bytes are a proper prefix of another token's (``{`` of ``{"``, `` `` of
    `` true``). Forced text that ends in one of them may be spelled by the model with the longer
    token, so jump-forward leaves that last piece to the draft. Cached per tokenizer."""
    _, _, info = _compiler_entry(tokenizer, vocab_size)
    key = tokenizer_key(tokenizer, vocab_size)
    if key not in _prefix_tokens:
        _prefix_tokens[key] = tokens_prefixing_others(info.decoded_vocab)
    return _prefix_tokens[key]


def tokens_prefixing_others(vocab: list[bytes]) -> frozenset[int]:
    """Pure: ids i such that some other vocab string starts with vocab[i]. Once sorted, the
    strings starting with v follow v directly, so comparing with the next larger one suffices."""
    out: set[int] = set()
    larger: bytes | None = None  # the nearest string greater than the current one
    last: bytes | None = None
    for i in sorted(range(len(vocab)), key=vocab.__getitem__, reverse=True):
        if vocab[i] != last:
            larger, last = last, vocab[i]
        if vocab[i] and larger is not None and larger.startswith(vocab[i]):
            out.add(i)
    return frozenset(out)


def check_enforceable(spec: GrammarSpec) -> list[tuple[str, str]]:
    """Schema keywords the mask cannot enforce; raises if the spec asked for ``unenforced='error'``."""
    if not isinstance(spec, JSONSchema):
        return []
    from hfspec.grammar.unenforced import unenforced_keywords

    found = unenforced_keywords(spec.json_schema)
    if found and spec.unenforced == "error":
        listed = ", ".join(f"{kw!r} at {path or '/'}" for path, kw in found[:8])
        raise UnenforcedSchemaError(
            f"The schema uses keywords the token mask cannot enforce: {listed}. Outputs could violate them. "
            "Use JSONSchema(..., unenforced='validate') to check every output with jsonschema instead, "
            "or remove the keywords."
        )
    return found


def compile_spec(spec: GrammarSpec, tokenizer: Any, vocab_size: int):
    """The cached ``xgrammar.CompiledGrammar`` of ``spec`` for this tokenizer and width."""
    if not isinstance(spec, GrammarSpec):
        raise GrammarError(
            "grammar= must be an hfspec grammar spec "
            f"(hfspec.JSONSchema, Regex, EBNF, Lark, StructuralTag, JSON, Crane); "
            f"got {type(spec).__name__}."
        )
    check_enforceable(spec)
    key = (tokenizer_key(tokenizer, vocab_size), spec.cache_key())
    if key in _compiled:
        _compiled.move_to_end(key)
        return _compiled[key]
    compiled = _compile(spec, compiler_for(tokenizer, vocab_size))
    _check_satisfiable(spec, compiled, vocab_size)
    _check_completable(spec, compiled, tokenizer, vocab_size)
    _compiled[key] = compiled
    if len(_compiled) > _MAX_GRAMMARS:
        _compiled.popitem(last=False)
    return compiled


def _compile(spec: GrammarSpec, compiler):
    try:
        return spec.compile_with(compiler)
    except GrammarError:
        raise
    except Exception as err:
        message = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        message = message.split("] ", 1)[-1] if message.startswith("[") else message
        message = re.sub(r"^\S+\.(cc|h):\d+: ", "", message)  # drop xgrammar's C++ source location
        message = f"{type(spec).__name__} could not be compiled: {message}"
        if isinstance(spec, JSONSchema):
            from hfspec.grammar.diagnose import name_feature

            message = name_feature(message, spec.json_schema, _char_level_compiles)
        raise GrammarError(message) from err


def _char_level_compiles(schema: dict) -> bool:
    import json

    try:
        _text_compiler_instance().compile_json_schema(json.dumps(schema), strict_mode=True)
        return True
    except Exception:  # xgrammar raises RuntimeError for every failure
        return False


def _check_satisfiable(spec: GrammarSpec, compiled, vocab_size: int) -> None:
    """A grammar that allows no first token (e.g. an empty character class) can never finish."""
    xgr = _xgr()
    matcher = xgr.GrammarMatcher(compiled, override_stop_tokens=[0])
    bitmask = xgr.allocate_token_bitmask(1, vocab_size)
    matcher.fill_next_token_bitmask(bitmask, 0)
    if not bool(bitmask.ne(0).any()) and not matcher.is_completed():
        raise GrammarError(
            f"{type(spec).__name__} accepts no output at all (unsatisfiable); check the pattern."
        )


# Bounds of the completion search: cheap enough to run on every compile (tiny vocabularies).
_SEARCH_NODES = 256  # matcher states expanded
_SEARCH_DEPTH = 64  # tokens on one path
_SEARCH_BRANCH = 64  # tokens tried per state, best first


def _check_completable(spec: GrammarSpec, compiled, tokenizer: Any, vocab_size: int) -> None:
    """A grammar whose every token path dead-ends (e.g. ``{"enum": ["Q"]}`` over a vocabulary
    without ``Q``: the first token ``"`` is allowed, then nothing) fails before any forward pass."""
    order = _token_order_for(tokenizer, vocab_size)
    if order.spells_every_byte:
        return  # every byte string is spellable: a grammar that starts can finish (_check_satisfiable)
    # JSON grammars allow exactly [ \n\r\t]* wherever they allow whitespace outside strings, so
    # whitespace-only tokens there can be left out without losing any completion
    skip = isinstance(spec, JSON) or (isinstance(spec, JSONSchema) and spec.any_whitespace)
    verdict, dead_end = completion_search(compiled, order, skip_whitespace=skip)
    if verdict is False:
        raise GrammarError(
            f"{type(spec).__name__} cannot be completed with this tokenizer: every token path dead-ends "
            f"(e.g. after {dead_end!r} the grammar needs text that no token of the vocabulary can spell). "
            "Use the model's own tokenizer, or change the grammar to use characters the vocabulary has."
        )


class _TokenOrder:
    """Per tokenizer: whether the completion search is needed, and which tokens it tries first."""

    def __init__(self, decoded_vocab: list[bytes], vocab_size: int, stop_id: int) -> None:
        vocab = list(decoded_vocab[:vocab_size]) + [b""] * max(0, vocab_size - len(decoded_vocab))
        self.vocab = vocab
        self.stop_id = stop_id  # the search's stop token: the tokenizer's EOS, never tried as text
        self.spells_every_byte = len({v for v in vocab if len(v) == 1}) == 256
        self._rank = None

    def ranks(self):
        """(first byte, closing-only flag, whitespace-only flag, static rank: shorter then lower id) per token."""
        if self._rank is None:
            import torch

            vocab, size = self.vocab, len(self.vocab)
            closing = frozenset(b'"}])')
            first = torch.tensor([v[0] if v else 256 for v in vocab], dtype=torch.long)
            length = torch.tensor([min(len(v), 63) for v in vocab], dtype=torch.long)
            is_closing = torch.tensor([bool(v) and all(b in closing for b in v) for v in vocab])
            is_space = torch.tensor([bool(v) and all(b in b" \n\r\t" for b in v) for v in vocab])
            self._rank = (first, is_closing, is_space, length * size + torch.arange(size))
        return self._rank


def _expected_closer(text: bytes) -> int:
    """The byte that closes the innermost open JSON-like string, object or array of ``text`` (256: none)."""
    stack: list[int] = []
    in_string = escaped = False
    for byte in text:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x7B, 0x5B):
            stack.append(0x7D if byte == 0x7B else 0x5D)
        elif stack and byte == stack[-1]:
            stack.pop()
    return 0x22 if in_string else (stack[-1] if stack else 256)


def _token_order_for(tokenizer: Any, vocab_size: int) -> _TokenOrder:
    _, _, info = _compiler_entry(tokenizer, vocab_size)
    key = tokenizer_key(tokenizer, vocab_size)
    if key not in _token_order:
        eos = getattr(tokenizer, "eos_token_id", None)
        stop_id = int(eos) if isinstance(eos, int) and 0 <= eos < vocab_size else 0
        _token_order[key] = _TokenOrder(info.decoded_vocab, vocab_size, stop_id)
    return _token_order[key]


def completion_search(compiled, order: _TokenOrder, skip_whitespace: bool = False) -> tuple[bool | None, str]:
    """Bounded depth-first search for a token path from the start to a complete sentence.

    Returns (True, "") when one is found; (False, text) when every path was explored to a dead
    end (a state that is not complete and allows no token) with nothing cut off: the grammar
    provably cannot be completed, ``text`` is one dead-end prefix; (None, "") when the bounds
    (``_SEARCH_NODES`` states, ``_SEARCH_DEPTH`` tokens, ``_SEARCH_BRANCH`` tokens per state)
    cut the search short: nothing is claimed and decoding checks each step as usual.
    Tokens are tried best first: a token starting with the character that closes the innermost
    open string / object / array, then tokens made of closing characters, then tokens whose first
    byte the path has not used yet (so a repeatable character does not loop), then the rest;
    within each tier shorter tokens and lower ids first. ``skip_whitespace`` (for JSON grammars
    with any whitespace, where whitespace outside strings is always the optional ``[ \n\r\t]*``)
    never tries a whitespace-only token outside a string: removing such tokens from a complete
    output leaves a complete output, so no completion is lost and whitespace cannot loop.
    """
    import torch

    xgr = _xgr()
    vocab_size = len(order.vocab)
    first_byte, closing_only, space_only, rank = order.ranks()
    tier_weight = 64 * vocab_size
    matcher = xgr.GrammarMatcher(compiled, override_stop_tokens=[order.stop_id])
    bitmask = xgr.allocate_token_bitmask(1, vocab_size)
    shifts = torch.arange(32, dtype=torch.int32)
    path: list[int] = []
    cut = False
    dead_end = ""
    nodes = 0

    def candidates() -> list[int]:
        nonlocal cut
        matcher.fill_next_token_bitmask(bitmask, 0)
        allowed = ((bitmask[0, :, None] >> shifts) & 1).bool().reshape(-1)[:vocab_size].clone()
        allowed[order.stop_id] = False  # completion is read from is_completed() instead
        closer = _expected_closer(b"".join(order.vocab[t] for t in path))
        if skip_whitespace and closer != 0x22:
            allowed &= ~space_only
        ids = allowed.nonzero().reshape(-1)
        if ids.numel() == 0:
            return []
        used = torch.zeros(257, dtype=torch.bool)
        if path:
            used[first_byte[torch.tensor(path)]] = True
        first = first_byte[ids]
        novel = ~used[first]
        tier = torch.where(
            first == closer, 0, torch.where(closing_only[ids] & novel, 1, torch.where(novel, 2, 3))
        )
        key = tier * tier_weight + rank[ids]
        take = min(_SEARCH_BRANCH, ids.numel())
        cut = cut or ids.numel() > take
        return ids[torch.topk(key, take, largest=False).indices].tolist()

    if matcher.is_completed():
        return True, ""
    stack = [candidates()]
    if not stack[0]:
        return False, ""
    while stack:
        if not stack[-1]:  # this state's candidates are exhausted: back up one token
            stack.pop()
            if path:
                matcher.rollback(1)
                path.pop()
            continue
        token = stack[-1].pop(0)
        if nodes >= _SEARCH_NODES:
            return None, ""
        nodes += 1
        if not matcher.accept_token(token):  # cannot happen for an allowed token; treat as cut
            cut = True
            continue
        path.append(token)
        if matcher.is_completed():
            return True, ""
        if len(path) >= _SEARCH_DEPTH:
            cut = True
            nxt = []
        else:
            nxt = candidates()
            if not nxt and not dead_end:
                dead_end = b"".join(order.vocab[t] for t in path).decode("utf-8", "replace")
        stack.append(nxt)
    return (None, "") if cut else (False, dead_end)


_text_compiler = None


def _text_compiler_instance():
    """A compiler over an empty vocabulary: grammars checked on characters, no tokenizer needed."""
    global _text_compiler
    if _text_compiler is None:
        xgr = _xgr()
        _text_compiler = xgr.GrammarCompiler(xgr.TokenizerInfo([]), max_threads=1)
    return _text_compiler


def text_matches(spec: GrammarSpec, text: str) -> bool:
    """Whether ``text`` is a complete sentence of ``spec`` (character level, no tokenizer)."""
    xgr = _xgr()
    matcher = xgr.GrammarMatcher(_compile(spec, _text_compiler_instance()), terminate_without_stop_token=True)
    return bool(matcher.accept_string(text)) and bool(matcher.is_completed())


def resolve_tokenizer(spec: GrammarSpec, call_tokenizer: Any) -> Any:
    """The tokenizer the grammar is compiled for: the spec's or the call's; they must agree."""
    own = spec.tokenizer
    if own is None and call_tokenizer is None:
        raise GrammarError(
            "grammar= needs the model's tokenizer: pass tokenizer=tok to generate() "
            f"(as for stop_strings) or build the spec with {type(spec).__name__}(..., tokenizer=tok)."
        )
    if own is not None and call_tokenizer is not None and own is not call_tokenizer:
        if own.get_vocab() != call_tokenizer.get_vocab():
            raise GrammarError(
                "The grammar spec was built for a different tokenizer than the tokenizer= of this call "
                "(their vocabularies differ); pass one tokenizer."
            )
    return own if own is not None else call_tokenizer
