"""Grammar cost per position on Qwen's 151,936-wide vocabulary: filling the mask, and applying it
with xgrammar's CPU kernel against hfspec.grammar.bitmask.apply_bitmask_inplace.

Masks are real: JSON Schemas from JSONSchemaBench compiled for the real Qwen2.5-Coder tokenizer
(hfspec's packaged copy, lm-head width 151,936) with ``any_whitespace=False`` as the grammar
benchmark runs them, walked along the tokens of each schema's first valid instance (written with
xgrammar's separators). At every position: fill (``fill_next_token_bitmask``), apply with
xgrammar's kernel, apply with hfspec's, each the median of ``--repeats`` timed calls on a fresh copy
of float32 logits (the copy is not timed), and both results must be identical. Also stacked: each
position with the next 7 as one (8, V) batch, the shape a verify step masks. One torch thread.
Per position the summary also splits by the path hfspec took (allowed-ids, or xgrammar's kernel).

    python benchmarks/mask_apply.py                 # writes benchmarks/results/mask-apply.json
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import pathlib
import platform
import statistics
import time

import torch
import xgrammar as xgr

import hfspec
from hfspec.grammar.bitmask import SPARSE_SHARE, apply_bitmask_inplace
from hfspec.grammar.compile import compile_spec
from hfspec.testing import load_tokenizer_dir

VOCAB = 151_936  # Qwen2.5-Coder lm-head width (len(tokenizer) is 151,665)
SCHEMAS = ("BFCL_java_24", "Github_easy---o30126", "JsonSchemaStore---commands")
ROOT = pathlib.Path(__file__).resolve().parent.parent
STACK = 8


def tokenizer_dir() -> pathlib.Path:
    for path in (ROOT / "hfspec" / "data" / "qwen2.5-coder-tokenizer", ROOT / "tests" / "data" / "qwen2.5-coder-tokenizer"):
        if path.exists():
            return path
    raise SystemExit("Qwen tokenizer not found under hfspec/data or tests/data")


def data_dir(given: str | None) -> pathlib.Path:
    candidates = [given, os.environ.get("HFSPEC_JSONSCHEMABENCH"), ROOT / "tests" / "data" / "jsonschemabench",
                  "/work/shared/data/jsonschemabench"]
    for path in candidates:
        if path and pathlib.Path(path).exists():
            return pathlib.Path(path)
    raise SystemExit("JSONSchemaBench folder not found; pass --data")


def timed(fn, repeats: int, setup=None) -> float:
    """Median seconds of ``fn(setup())`` over ``repeats`` calls; ``setup`` is not timed."""
    samples = []
    for _ in range(repeats):
        arg = setup() if setup is not None else None
        start = time.perf_counter()
        fn(arg)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def positions(tok, name: str, folder: pathlib.Path):
    """(compiled grammar, token ids of the first valid instance)."""
    record = json.loads((folder / f"{name}.json").read_text())
    instance = next(t["data"] for t in record["tests"] if t["valid"])
    spec = hfspec.JSONSchema(record["schema"], any_whitespace=False)
    compiled = compile_spec(spec, tok, VOCAB)
    text = json.dumps(instance, separators=(", ", ": "), ensure_ascii=False)
    return compiled, tok.encode(text, add_special_tokens=False), text


def measure(tok, name: str, folder: pathlib.Path, repeats: int) -> dict:
    compiled, ids, text = positions(tok, name, folder)
    matcher = xgr.GrammarMatcher(compiled, override_stop_tokens=[tok.eos_token_id])
    masks, per_position = [], []
    logits = torch.randn(1, VOCAB, generator=torch.Generator().manual_seed(0))
    for step, token in enumerate([*ids, None]):
        bitmask = xgr.allocate_token_bitmask(1, VOCAB)
        fill = timed(lambda _: matcher.fill_next_token_bitmask(bitmask, 0), repeats)
        masks.append(bitmask.clone())
        allowed = int(((bitmask[0, :, None] >> torch.arange(32, dtype=torch.int32)) & 1).sum())
        kernel = timed(lambda x: xgr.apply_token_bitmask_inplace(x, bitmask), repeats, logits.clone)
        ours = timed(lambda x: apply_bitmask_inplace(x, bitmask), repeats, logits.clone)
        a, b = logits.clone(), logits.clone()
        xgr.apply_token_bitmask_inplace(a, bitmask)
        apply_bitmask_inplace(b, bitmask)
        assert torch.equal(a, b), (name, step)
        words = int((bitmask[0] != 0).sum())
        path = "allowed-ids" if words <= int(SPARSE_SHARE * (VOCAB // 32)) else "kernel"
        per_position.append({"allowed": allowed, "words_with_allowed": words, "path": path, "fill_us": fill * 1e6,
                             "xgrammar_apply_us": kernel * 1e6, "hfspec_apply_us": ours * 1e6})
        if token is not None:
            assert matcher.accept_token(token), (name, step, token)
    stacked = []
    batch_logits = torch.randn(STACK, VOCAB, generator=torch.Generator().manual_seed(1))
    for start in range(0, max(1, len(masks) - STACK + 1)):
        window = masks[start : start + STACK]
        bitmask = torch.cat(window + [window[-1]] * (STACK - len(window)))
        kernel = timed(lambda x: xgr.apply_token_bitmask_inplace(x, bitmask), repeats, batch_logits.clone)
        ours = timed(lambda x: apply_bitmask_inplace(x, bitmask), repeats, batch_logits.clone)
        stacked.append({"xgrammar_apply_us": kernel * 1e6 / STACK, "hfspec_apply_us": ours * 1e6 / STACK})
    return {"schema": name, "instance": text, "positions": len(per_position), "per_position": per_position,
            "stacked_8_per_position": stacked}


def quantiles(values: list[float]) -> dict:
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"p50": round(statistics.median(ordered), 2), "p90": round(pick(0.9), 2), "mean": round(statistics.fmean(ordered), 2)}


def summary(rows: list[dict], key: str) -> dict:
    out = {}
    fields = ("fill_us", "xgrammar_apply_us", "hfspec_apply_us") if key == "per_position" else (
        "xgrammar_apply_us", "hfspec_apply_us")
    for field in fields:
        out[field] = quantiles([p[field] for r in rows for p in r[key]])
    if key == "per_position":
        for path in ("allowed-ids", "kernel"):
            taken = [p for r in rows for p in r[key] if p["path"] == path]
            out[f"positions_{path}"] = len(taken)
            if taken:
                out[f"{path}_positions"] = {f: quantiles([p[f] for p in taken]) for f in fields}
        out["grammar_before_us"] = quantiles([p["fill_us"] + p["xgrammar_apply_us"] for r in rows for p in r[key]])
        out["grammar_after_us"] = quantiles([p["fill_us"] + p["hfspec_apply_us"] for r in rows for p in r[key]])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--schemas", default=",".join(SCHEMAS))
    parser.add_argument("--data", default=None, help="JSONSchemaBench folder")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "mask-apply.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    tok = load_tokenizer_dir(tokenizer_dir())
    folder = data_dir(args.data)
    rows = [measure(tok, name, folder, args.repeats) for name in args.schemas.split(",")]
    result = {
        "what": __doc__.split("\n\n")[0],
        "vocab": VOCAB,
        "sparse_share": SPARSE_SHARE,
        "repeats": args.repeats,
        "torch_threads": 1,
        "versions": {"torch": torch.__version__, "xgrammar": importlib.metadata.version("xgrammar"), "python": platform.python_version()},
        "cpu": platform.processor() or platform.machine(),
        "load_average": os.getloadavg(),
        "summary": {"per_position": summary(rows, "per_position"),
                    "stacked_8_per_position": summary(rows, "stacked_8_per_position")},
        "schemas": rows,
    }
    pathlib.Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["summary"], indent=1))
    for row in rows:
        print(row["schema"], row["positions"], "positions", summary([row], "per_position")["hfspec_apply_us"])


if __name__ == "__main__":
    main()
