"""Mask-level conformance of JSON Schema grammars on JSONSchemaBench (issue 3, item 5).

For every schema file of the bench (``schema`` plus ``tests`` = valid/invalid instances) this
compiles ``JSONSchema(schema)`` for the real tokenizer and feeds every instance, tokenized, to a
fresh ``xgrammar.GrammarMatcher``:

* a valid instance, serialised compact (``json.dumps(x)``) and indented (``indent=2``), must have
  every token accepted, the matcher completed and EOS accepted at the end;
* an invalid instance (compact) must be rejected: some token refused, or not completable. When the
  mask lets it through, it counts as "caught by validation" if ``JSONSchema.validation_errors``
  finds it *and* ``unenforced_keywords`` flags the schema (so hfspec would validate the output),
  otherwise as "missed": a real conformance hole.

Schemas that ``jsonschema`` refuses are "invalid schema"; schemas xgrammar cannot compile are
"unsupported", with the ``GrammarError`` message naming the feature. xgrammar also *compiles*
some schemas while relaxing a keyword and only says so on stderr; those warnings are captured
per schema (on a cold compile) and reported as "relaxed" features.

Timings: compile time per schema (first compile in the process; ``compile_spec`` caches) and the
time of ``fill_next_token_bitmask`` at every step of the valid instances (p50/p99 in µs).

Nothing here prints; ``run_conformance`` returns a report dict that ``render_markdown`` turns into
docs/conformance.md and the ``hfspec conformance`` command writes as JSON.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import pathlib
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from hfspec.exceptions import GrammarError
from hfspec.grammar.diagnose import name_feature, without_keywords
from hfspec.testing import qwen_tokenizer_dir

SCHEMA = "hfspec-conformance/1"
TOKENIZER_DIR = qwen_tokenizer_dir()
VENDORED_DATA = pathlib.Path("tests") / "data" / "jsonschemabench"  # in a source checkout
VOCAB_SIZE = 151936  # Qwen2.5-Coder lm-head width
EOS_ID = 151645  # <|im_end|>
DATA_ENV = "HFSPEC_JSONSCHEMABENCH"
LAYOUTS = ("compact", "indented")

STATUS_COMPILED = "compiled"
STATUS_INVALID_SCHEMA = "invalid schema"
STATUS_UNSUPPORTED = "unsupported"

REJECTED = "rejected"
CAUGHT = "accepted by mask, caught by validation"
MISSED = "missed"


# --------------------------------------------------------------------------- data
def default_data_dir() -> pathlib.Path | None:
    """``$HFSPEC_JSONSCHEMABENCH`` if set, else the repository's vendored copy when the current
    directory is a source checkout; None otherwise (pass the folder explicitly)."""
    env = os.environ.get(DATA_ENV)
    if env:
        return pathlib.Path(env)
    return VENDORED_DATA if VENDORED_DATA.is_dir() else None


def source_group(name: str) -> str:
    """The bench's source group from a file name.

    ``Github_easy---o17678.json`` -> ``Github_easy``; ``JME_11.json`` -> ``JME``;
    ``BFCL_parallel_multiple_102.json`` -> ``BFCL`` (all BFCL sub-kinds are one source).
    """
    stem = name[:-5] if name.endswith(".json") else name
    head = re.sub(r"_\d+$", "", stem.split("---", 1)[0])
    return "BFCL" if head.startswith("BFCL") else head


def bench_files(data_dir: str | os.PathLike) -> list[pathlib.Path]:
    """The schema files of the bench, sorted by name (NOTICE.md and other non-JSON files skipped)."""
    return sorted(p for p in pathlib.Path(data_dir).glob("*.json") if p.is_file())


def every_nth_per_group(
    files: Sequence[pathlib.Path], n: int, *, max_bytes: int | None = None
) -> list[pathlib.Path]:
    """A deterministic subset: the 1st, (n+1)th, ... file of every source group.

    With ``max_bytes``, files larger than that are left out first (big schemas take seconds to
    compile); the default test subset uses ``n=4, max_bytes=50_000``, which keeps all 15 groups.
    """
    seen: dict[str, int] = {}
    out = []
    for path in files:
        if max_bytes is not None and path.stat().st_size > max_bytes:
            continue
        group = source_group(path.name)
        if seen.get(group, 0) % n == 0:
            out.append(path)
        seen[group] = seen.get(group, 0) + 1
    return out


# --------------------------------------------------------------------------- results
@dataclass
class Failure:
    """One instance whose outcome is not the expected one (or is worth listing)."""

    file: str
    index: int  # position in the file's ``tests``
    valid: bool
    layout: str
    outcome: str  # "rejected" (valid instance), CAUGHT or MISSED (invalid instance)
    where: str = ""  # token/char position and context of a rejection
    reason: str = ""  # diagnosis
    description: str = ""


@dataclass
class FileResult:
    file: str
    group: str
    status: str
    message: str = ""
    compile_s: float | None = None
    unenforced: list[str] = field(default_factory=list)
    relaxed: list[str] = field(default_factory=list)  # xgrammar warnings: keywords compiled but relaxed
    valid_total: int = 0
    accepted: dict[str, int] = field(default_factory=lambda: dict.fromkeys(LAYOUTS, 0))
    invalid_total: int = 0
    invalid_rejected: int = 0
    invalid_caught: int = 0
    invalid_missed: int = 0
    failures: list[Failure] = field(default_factory=list)
    mask_ns: list[int] = field(default_factory=list, repr=False)  # not written: aggregated per group

    def row(self) -> dict[str, Any]:
        """The JSON row: only what is needed to review the file."""
        out = {
            "file": self.file,
            "group": self.group,
            "status": self.status,
            "valid": self.valid_total,
            "accepted": self.accepted,
            "invalid": self.invalid_total,
            "rejected": self.invalid_rejected,
            "caught": self.invalid_caught,
            "missed": self.invalid_missed,
        }
        if self.message:
            out["message"] = self.message
        if self.compile_s is not None:
            out["compile_ms"] = round(self.compile_s * 1e3, 2)
        if self.mask_ns:
            out["mask_us_p50"], out["mask_us_p99"] = _percentiles_us(self.mask_ns)
        if self.relaxed:
            out["relaxed"] = self.relaxed
        if self.unenforced:  # capped: some schemas flag hundreds of places
            more = len(self.unenforced) - 10
            out["unenforced"] = self.unenforced[:10] + ([f"... and {more} more"] if more > 0 else [])
        return out


def _percentiles_us(samples_ns: Sequence[int]) -> tuple[float | None, float | None]:
    if not samples_ns:
        return None, None
    ordered = sorted(samples_ns)

    def pick(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1e3, 1)

    return pick(0.50), pick(0.99)


# --------------------------------------------------------------------------- xgrammar plumbing
@contextlib.contextmanager
def _captured_stderr_fd() -> Iterator[list[str]]:
    """Collect what C++ code writes to file descriptor 2 (xgrammar's warnings) into the yielded list."""
    lines: list[str] = []
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real fd 2: nothing to capture
        yield lines
        return
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield lines
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines.extend(sink.read().decode("utf-8", "replace").splitlines())


_WARNING = re.compile(r"Warning:\s*(.*)$")


def relaxed_features(stderr_lines: Iterable[str]) -> list[str]:
    """xgrammar's compile warnings ("... is not supported; ignoring ..."), deduplicated, in order."""
    found = []
    for line in stderr_lines:
        match = _WARNING.search(line)
        if match:
            found.append(match.group(1).strip())
    return list(dict.fromkeys(found))


def _validation_errors(spec: Any, text: str) -> tuple[list[str], str]:
    """(jsonschema's errors, "" or why validation itself failed, e.g. an unresolvable remote $ref)."""
    try:
        return spec.validation_errors(text), ""
    except Exception as err:  # noqa: BLE001 - reported, never fatal
        return [], f"validation_errors raised {type(err).__name__}: {str(err).splitlines()[0][:160]}"


def _unenforced(schema: dict) -> list[str]:
    from hfspec.grammar.unenforced import unenforced_keywords

    return [f"{kw} at {path or '/'}" for path, kw in unenforced_keywords(schema)]


class Checker:
    """Feeds texts to matchers of one tokenizer; keeps the bitmask and the char-level compiler."""

    def __init__(self, tokenizer: Any, vocab_size: int = VOCAB_SIZE, eos_id: int = EOS_ID):
        import xgrammar as xgr

        self.xgr = xgr
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.eos_id = eos_id
        self.bitmask = xgr.allocate_token_bitmask(1, vocab_size)
        self._char_compiler = None
        from hfspec.grammar.compile import compiler_for

        compiler_for(tokenizer, vocab_size)  # build TokenizerInfo now, not inside the first compile time

    def compile(self, schema: Any) -> tuple[Any, Any, float, list[str]]:
        """(spec, compiled, seconds, relaxed features); raises GrammarError (invalid or unsupported)."""
        from hfspec.grammar.compile import compile_spec
        from hfspec.grammar.specs import JSONSchema

        spec = JSONSchema(schema)
        with _captured_stderr_fd() as lines:
            start = time.perf_counter()
            compiled = compile_spec(spec, self.tokenizer, self.vocab_size)
            seconds = time.perf_counter() - start
        return spec, compiled, seconds, relaxed_features(lines)

    def feed(self, matcher: Any, text: str, timings: list[int] | None = None) -> tuple[bool, str, str]:
        """Reset ``matcher`` and feed ``text`` token by token.

        Returns (accepted to the end with EOS, where it failed, the refused token's text). With
        ``timings``, ``fill_next_token_bitmask`` is timed before every token (ns appended).
        """
        matcher.reset()
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        consumed = 0
        for i, token in enumerate(ids):
            if timings is not None and not matcher.is_terminated():
                start = time.perf_counter_ns()
                matcher.fill_next_token_bitmask(self.bitmask)
                timings.append(time.perf_counter_ns() - start)
            piece = self.tokenizer.decode([token])
            if not matcher.accept_token(token):
                return (
                    False,
                    (
                        f"token {i} {piece!r} rejected at char {consumed}: "
                        f"...{text[max(0, consumed - 60) : consumed]!r} + {text[consumed : consumed + 30]!r}"
                    ),
                    piece,
                )
            consumed += len(piece)
        if not matcher.is_completed():
            return False, f"not complete after all {len(ids)} tokens", ""
        if not matcher.accept_token(self.eos_id):
            return False, f"EOS rejected after all {len(ids)} tokens", ""
        return True, "", ""

    def _char_compile(self, schema: Any, **options: Any) -> Any:
        """The schema compiled for no vocabulary (cheap: no token masks), or None if xgrammar refuses it."""
        xgr = self.xgr
        if self._char_compiler is None:
            self._char_compiler = xgr.GrammarCompiler(xgr.TokenizerInfo([]), max_threads=1)
        kwargs = {"any_whitespace": True, "strict_mode": True, **options}
        try:
            with _captured_stderr_fd():
                return self._char_compiler.compile_json_schema(json.dumps(schema), **kwargs)
        except Exception:  # noqa: BLE001 - a diagnosis, never fatal
            return None

    def char_compiles(self, schema: Any) -> bool:
        return self._char_compile(schema) is not None

    def char_accepts(self, schema: Any, text: str, **options: Any) -> bool:
        """Whether ``text`` is accepted at the character level by the schema compiled with ``options``."""
        compiled = self._char_compile(schema, **options)
        if compiled is None:
            return False
        matcher = self.xgr.GrammarMatcher(compiled, terminate_without_stop_token=True)
        return bool(matcher.accept_string(text)) and bool(matcher.is_completed())

    def diagnose_rejection(self, spec: Any, text: str, refused: str = "") -> str:
        """Why a valid instance is rejected: bench label, key order, strict mode, a keyword, tokenization.

        Tries the schema at the character level with xgrammar's options relaxed and then with one
        family of keywords removed at a time; the first variant that accepts the text names the cause.
        """
        schema = spec.json_schema
        errors, _ = _validation_errors(spec, text)
        if errors:
            return f"bench label disagrees with jsonschema, which finds: {'; '.join(errors[:2])}"
        if self.char_accepts(schema, text):
            return "tokenization: the character-level grammar accepts the text but a token is refused (a bug)"
        relaxations = (
            ({}, []),
            ({"any_order": True}, [ORDER_REASON]),
            ({"strict_mode": False}, [STRICT_REASON]),
            ({"strict_mode": False, "any_order": True}, [ORDER_REASON, STRICT_REASON]),
        )
        for keywords, explain in ((None, None), *_ABLATIONS):
            variant = schema if keywords is None else without_keywords(schema, keywords)
            for options, reasons in relaxations:
                if (keywords is None and not options) or not self.char_accepts(variant, text, **options):
                    continue
                if keywords is not None:
                    named = "/".join(keywords)
                    detail = explain("\\" in refused)  # the refused token holds a backslash escape
                    reasons = [f"{named}: {detail} (accepted once {named} are removed)", *reasons]
                return "; and ".join(reasons)
        return "xgrammar rejects the text at the character level (a grammar limitation or bug)"


ORDER_REASON = (
    "property order: xgrammar (any_order=False, its default) requires the schema's declared property order "
    "and the instance lists its keys in another order"
)
STRICT_REASON = (
    "strict mode: hfspec compiles with strict_mode=True, which forbids properties/items the schema does "
    "not declare, and the instance has some"
)
_ABLATIONS = (
    (
        ("minLength", "maxLength"),
        lambda escape: (
            "xgrammar's length-bounded string refuses escape sequences (\\\", \\n, \\\\, \\uXXXX)"
            if escape
            else "xgrammar's length-bounded string refuses the value"
        ),
    ),
    (
        ("pattern",),
        lambda escape: (
            "xgrammar matches the regex against the whole string (JSON Schema searches anywhere "
            "in it) or its regex dialect differs"
        ),
    ),
    (("format",), lambda escape: "xgrammar's format grammar refuses the value"),
    (
        ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"),
        lambda escape: "xgrammar's numeric range grammar refuses the value",
    ),
    (("minItems", "maxItems"), lambda escape: "xgrammar's array length bound refuses the value"),
    (("minProperties", "maxProperties"), lambda escape: "xgrammar's property-count bound refuses the value"),
    (("oneOf",), lambda escape: "xgrammar's oneOf handling refuses the value"),
    (("allOf",), lambda escape: "xgrammar's allOf handling refuses the value"),
)


# --------------------------------------------------------------------------- one file
def check_file(
    checker: Checker,
    name: str,
    schema: Any,
    tests: Sequence[dict[str, Any]],
    *,
    group: str | None = None,
) -> FileResult:
    """Compile one schema and run all its instances; never raises for a bad schema."""
    import jsonschema  # noqa: F401 - JSONSchema needs it; fail here, not per file

    result = FileResult(file=name, group=group or source_group(name), status=STATUS_COMPILED)
    from hfspec.grammar.specs import JSONSchema

    try:
        JSONSchema(schema)
    except GrammarError as err:
        result.status, result.message = STATUS_INVALID_SCHEMA, str(err)
        return result
    try:
        spec, compiled, result.compile_s, result.relaxed = checker.compile(schema)
    except GrammarError as err:
        result.status, result.message = (
            STATUS_UNSUPPORTED,
            name_feature(str(err), schema, checker.char_compiles),
        )
        return result
    try:
        result.unenforced = _unenforced(spec.json_schema)
    except Exception as err:  # noqa: BLE001 - the helper's bug must not stop the run; it is reported
        result.message = f"unenforced_keywords raised {type(err).__name__}: {err}"
    matcher = checker.xgr.GrammarMatcher(compiled, override_stop_tokens=[checker.eos_id])
    for index, instance in enumerate(tests):
        data = instance.get("data")
        description = str(instance.get("description", ""))[:80]
        if instance.get("valid"):
            result.valid_total += 1
            for layout in LAYOUTS:
                text = json.dumps(data) if layout == "compact" else json.dumps(data, indent=2)
                ok, where, refused = checker.feed(matcher, text, result.mask_ns)
                if ok:
                    result.accepted[layout] += 1
                else:
                    reason = checker.diagnose_rejection(spec, text, refused)
                    result.failures.append(
                        Failure(name, index, True, layout, REJECTED, where, reason, description)
                    )
        else:
            result.invalid_total += 1
            text = json.dumps(data)
            ok, _, _ = checker.feed(matcher, text)
            if not ok:
                result.invalid_rejected += 1
                continue
            errors, failed = _validation_errors(spec, text)
            if errors and result.unenforced:
                result.invalid_caught += 1
                result.failures.append(
                    Failure(name, index, False, "compact", CAUGHT, "", "; ".join(errors[:2]), description)
                )
            else:
                result.invalid_missed += 1
                reason = failed or (
                    f"jsonschema finds: {'; '.join(errors[:2])}; but unenforced_keywords flags nothing"
                    if errors
                    else "jsonschema (Python) also accepts it: the bench label disagrees with jsonschema "
                    "(often an unchecked `format`)"
                )
                result.failures.append(
                    Failure(name, index, False, "compact", MISSED, "", reason, description)
                )
    return result


# --------------------------------------------------------------------------- the run
def load_tokenizer(path: str | os.PathLike | None = None) -> Any:
    from hfspec.testing import load_tokenizer_dir

    return load_tokenizer_dir(path or TOKENIZER_DIR)


def run_files(
    files: Sequence[pathlib.Path], tokenizer: Any | None = None, *, progress: bool = False
) -> list[FileResult]:
    """Check every file (one matcher per schema, reset between instances)."""
    checker = Checker(tokenizer if tokenizer is not None else load_tokenizer())
    results = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(files), unit="schema", desc="conformance", dynamic_ncols=True)
    try:
        for path in files:
            if bar is not None:
                bar.set_postfix_str(path.name[:40], refresh=False)
            entry = json.loads(path.read_text())
            results.append(check_file(checker, path.name, entry.get("schema"), entry.get("tests") or []))
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return results


def aggregate(results: Sequence[FileResult]) -> dict[str, Any]:
    """Counts and timing percentiles over some file results."""
    compiled = [r for r in results if r.status == STATUS_COMPILED]
    mask = [t for r in compiled for t in r.mask_ns]
    p50, p99 = _percentiles_us(mask)
    compile_ms = sorted(r.compile_s * 1e3 for r in compiled if r.compile_s is not None)
    return {
        "files": len(results),
        "compiled": len(compiled),
        "invalid_schema": sum(r.status == STATUS_INVALID_SCHEMA for r in results),
        "unsupported": sum(r.status == STATUS_UNSUPPORTED for r in results),
        "relaxed_files": sum(bool(r.relaxed) for r in compiled),
        "valid": sum(r.valid_total for r in compiled),
        "accepted": {layout: sum(r.accepted[layout] for r in compiled) for layout in LAYOUTS},
        "invalid": sum(r.invalid_total for r in compiled),
        "rejected": sum(r.invalid_rejected for r in compiled),
        "caught": sum(r.invalid_caught for r in compiled),
        "missed": sum(r.invalid_missed for r in compiled),
        "compile_ms_p50": round(statistics.median(compile_ms), 2) if compile_ms else None,
        "compile_ms_max": round(compile_ms[-1], 2) if compile_ms else None,
        "mask_steps": len(mask),
        "mask_us_p50": p50,
        "mask_us_p99": p99,
    }


def build_report(
    results: Sequence[FileResult],
    *,
    data_dir: str | os.PathLike | None = None,
    command: str | None = None,
    wall_s: float | None = None,
) -> dict[str, Any]:
    """The JSON report: environment, totals, per-group aggregates, per-file rows and the lists to review."""
    groups: dict[str, list[FileResult]] = {}
    for r in results:
        groups.setdefault(r.group, []).append(r)
    failures = [f for r in results for f in r.failures]
    unsupported = [
        {"file": r.file, "group": r.group, "message": r.message}
        for r in results
        if r.status != STATUS_COMPILED
    ]
    relaxed: dict[str, list[str]] = {}
    for r in results:
        for warning in r.relaxed:
            relaxed.setdefault(warning, []).append(r.file)
    return {
        "schema": SCHEMA,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": command,
        "xgrammar": _version("xgrammar"),
        "jsonschema": _version("jsonschema"),
        "tokenizer": "Qwen2.5-Coder (hfspec/data/qwen2.5-coder-tokenizer), vocab width 151936, EOS <|im_end|>",
        "data": str(data_dir) if data_dir is not None else None,
        "wall_s": round(wall_s, 1) if wall_s is not None else None,
        "totals": aggregate(results),
        "groups": {g: aggregate(rs) for g, rs in sorted(groups.items())},
        "unsupported": unsupported,
        "relaxed": [{"warning": w, "files": fs} for w, fs in relaxed.items()],
        "valid_rejected": [asdict(f) for f in failures if f.valid],
        "caught_by_validation": [asdict(f) for f in failures if f.outcome == CAUGHT],
        "missed": [asdict(f) for f in failures if f.outcome == MISSED],
        "files": [r.row() for r in results],
    }


def run_conformance(
    data_dir: str | os.PathLike,
    *,
    limit: int | None = None,
    files: Sequence[pathlib.Path] | None = None,
    tokenizer: Any | None = None,
    progress: bool = False,
    command: str | None = None,
) -> dict[str, Any]:
    """Run the bench (all files, the first ``limit``, or the given ``files``) and build the report."""
    data_dir = pathlib.Path(data_dir)
    if files is None:
        if not data_dir.is_dir():
            raise GrammarError(
                f"JSONSchemaBench data directory {data_dir} not found (set ${DATA_ENV} or --data)"
            )
        files = bench_files(data_dir)
        if not files:
            raise GrammarError(f"no *.json schema files in {data_dir}")
    files = list(files)[:limit] if limit else list(files)
    start = time.perf_counter()
    results = run_files(files, tokenizer, progress=progress)
    return build_report(results, data_dir=data_dir, command=command, wall_s=time.perf_counter() - start)


def _version(package: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


# --------------------------------------------------------------------------- output
def write_json(report: dict[str, Any], path: str | os.PathLike) -> pathlib.Path:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    return path


def _frac(num: int, den: int) -> str:
    return f"{num}/{den}" if den else "–"


def _cell(value: Any) -> str:
    return "–" if value is None else str(value)


def _md_escape(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return text.replace("|", "\\|")


def render_markdown(report: dict[str, Any]) -> str:
    """docs/conformance.md: per-group table, totals, and the lists a reviewer must see."""
    header = (
        "| group | compiled | valid accepted (compact) | valid accepted (indented) | invalid rejected "
        "| caught by validation | missed | compile ms p50 / max | mask µs p50 / p99 |\n"
        "|---|---|---|---|---|---|---|---|---|\n"
    )

    def line(name: str, a: dict[str, Any]) -> str:
        return (
            f"| {name} | {_frac(a['compiled'], a['files'])} | {_frac(a['accepted']['compact'], a['valid'])} "
            f"| {_frac(a['accepted']['indented'], a['valid'])} | {_frac(a['rejected'], a['invalid'])} "
            f"| {a['caught']} | {a['missed']} | {_cell(a['compile_ms_p50'])} / {_cell(a['compile_ms_max'])} "
            f"| {_cell(a['mask_us_p50'])} / {_cell(a['mask_us_p99'])} |\n"
        )

    t = report["totals"]
    out = [
        "# JSON Schema conformance (JSONSchemaBench, token level)\n\n",
        "Produced by `hfspec conformance` ([hfspec/bench/conformance.py](../hfspec/bench/conformance.py)); "
        "raw results in [benchmarks/results/conformance.json](../benchmarks/results/conformance.json).\n\n",
        f"- command: `{report.get('command') or 'hfspec conformance'}`\n",
        f"- date: {report['date']}; xgrammar {report['xgrammar']}; jsonschema {report['jsonschema']}; "
        f"wall time {_cell(report.get('wall_s'))} s\n",
        f"- tokenizer: {report['tokenizer']}\n",
        "- data: JSONSchemaBench/MaskBench subset, vendored in `tests/data/jsonschemabench` "
        f"(or `${DATA_ENV}`): {t['files']} schema files\n\n",
        "Method: each schema is compiled as `hfspec.JSONSchema(schema)` (xgrammar, `any_whitespace=True`, "
        "`strict_mode=True`) for the real tokenizer. Every valid instance is serialised compact "
        "(`json.dumps(x)`) and indented (`json.dumps(x, indent=2)`), tokenized without special tokens and "
        "fed token by token to a fresh matcher: every token must be accepted, the matcher complete and "
        "EOS accepted. Every invalid instance (compact) must be rejected (a token refused or not "
        "completable); one the mask lets through is *caught by validation* when `jsonschema` finds it and "
        "`unenforced_keywords` flags the schema (so hfspec validates the output), else *missed*. Compile "
        "time is the first compile in the process; mask time is `fill_next_token_bitmask` (1 thread) at "
        "every step of the valid instances.\n\n",
        "## Per source group\n\n",
        header,
        *(line(g, a) for g, a in report["groups"].items()),
        line("**total**", t),
        "\n",
        f"Totals: {t['compiled']}/{t['files']} schemas compiled ({t['invalid_schema']} invalid, "
        f"{t['unsupported']} unsupported); valid instances accepted {t['accepted']['compact']}/{t['valid']} "
        f"compact and {t['accepted']['indented']}/{t['valid']} indented; invalid instances rejected "
        f"{t['rejected']}/{t['invalid']}, caught by validation {t['caught']}, missed {t['missed']}. "
        f"Mask fill over {t['mask_steps']} steps: p50 {_cell(t['mask_us_p50'])} µs, "
        f"p99 {_cell(t['mask_us_p99'])} µs.\n\n",
        "## Schemas not compiled\n\n",
    ]
    if report["unsupported"]:
        out += [
            f"- `{u['file']}` ({u['group']}): {_md_escape(u['message'])}\n" for u in report["unsupported"]
        ]
    else:
        out.append("None.\n")
    out += [
        "\n## Keywords xgrammar compiles but relaxes (its warnings)\n\n",
        "These schemas compile, but xgrammar says it ignores or weakens a keyword, so the mask is looser "
        "than the schema there (outputs are still validated when `unenforced_keywords` flags the keyword).\n\n",
    ]
    if report["relaxed"]:
        for item in report["relaxed"]:
            files = item["files"]
            shown = ", ".join(f"`{f}`" for f in files[:4]) + (
                f" and {len(files) - 4} more" if len(files) > 4 else ""
            )
            out.append(f"- {_md_escape(item['warning'])} — {len(files)} file(s): {shown}\n")
    else:
        out.append("None.\n")
    out.append("\n## Valid instances rejected by the mask\n\n")
    if report["valid_rejected"]:
        out.append("| file | instance | layout | reason | where |\n|---|---|---|---|---|\n")
        for f in report["valid_rejected"]:
            out.append(
                f"| `{f['file']}` | {f['index']} | {f['layout']} | {_md_escape(f['reason'], 200)} "
                f"| {_md_escape(f['where'], 160)} |\n"
            )
    else:
        out.append("None.\n")
    out.append("\n## Invalid instances the mask accepts\n\n")
    missed, caught = report["missed"], report["caught_by_validation"]
    out.append(f"Missed (a conformance hole): {len(missed) or 'none'}.\n\n")
    if missed:
        out.append("| file | instance | description | why not caught |\n|---|---|---|---|\n")
        for f in missed:
            out.append(
                f"| `{f['file']}` | {f['index']} | {_md_escape(f['description'], 80)} | {_md_escape(f['reason'], 200)} |\n"
            )
        out.append("\n")
    out.append(f"Caught by validation: {len(caught) or 'none'}.\n\n")
    if caught:
        out.append("| file | instance | jsonschema error |\n|---|---|---|\n")
        for f in caught:
            out.append(f"| `{f['file']}` | {f['index']} | {_md_escape(f['reason'], 200)} |\n")
    return "".join(out)


def write_markdown(report: dict[str, Any], path: str | os.PathLike) -> pathlib.Path:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_markdown(report))
    return path
