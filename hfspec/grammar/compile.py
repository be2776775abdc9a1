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
from hfspec.grammar.specs import GrammarSpec, JSONSchema

_MAX_TOKENIZERS = 8
_MAX_GRAMMARS = 256
_compilers: OrderedDict[tuple, tuple[Any, Any, Any]] = OrderedDict()  # key -> (tokenizer kept alive, compiler, info)
_prefix_tokens: dict[tuple, frozenset[int]] = {}  # key -> ids of tokens that prefix a longer token
_compiled: OrderedDict[tuple, Any] = OrderedDict()


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
            f"grammar= must be an hfspec grammar spec (hfspec.JSONSchema, Regex, EBNF, Lark, StructuralTag, JSON); "
            f"got {type(spec).__name__}."
        )
    check_enforceable(spec)
    key = (tokenizer_key(tokenizer, vocab_size), spec.cache_key())
    if key in _compiled:
        _compiled.move_to_end(key)
        return _compiled[key]
    compiled = _compile(spec, compiler_for(tokenizer, vocab_size))
    _check_satisfiable(spec, compiled, vocab_size)
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
