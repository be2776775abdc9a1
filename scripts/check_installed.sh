#!/usr/bin/env bash
# Smoke-test hfspec as a user gets it: a non-editable `pip install .`, run from outside the checkout.
#
#   scripts/check_installed.sh [--venv DIR] [--keep]
#
# What it does (about 2-3 minutes on 2 cores, most of it Ray start-up):
#   1. python -m venv --system-site-packages DIR (default /tmp/hfspec-installed, removed first), so
#      torch, transformers, xgrammar and ray come from the current environment and nothing is
#      downloaded; then `pip install --no-deps .` (not -e): the venv's own hfspec shadows any
#      editable install of the outer environment;
#   2. from an empty temporary directory: checks hfspec was imported from the venv (not the
#      checkout), runs `hfspec bench --tiny`, `hfspec bench-grammar --tiny`, `hfspec render`,
#      `hfspec conformance --data tests/data/jsonschemabench --limit 5` and
#      `examples/ray_extract.py --tiny`;
#   3. prints PASS (exit 0) or stops at the first failing step.
# The outer environment needs what `pip install -e ".[dev,bench]"` installs.
set -euo pipefail

VENV=/tmp/hfspec-installed
KEEP=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --venv) VENV="$2"; shift 2 ;;
    --keep) KEEP=1; shift ;;
    *) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
  esac
done
REPO="$(cd "$(dirname "$0")/.." && pwd)"
rm -rf "$VENV"
python -m venv --system-site-packages "$VENV"
"$VENV/bin/pip" install -q --no-deps "$REPO"
WORK="$(mktemp -d)"
cleanup() { rm -rf "$WORK"; [[ $KEEP == 1 ]] || rm -rf "$VENV"; }
trap cleanup EXIT
cd "$WORK"
step() { echo "== $*"; }

step "import from the installed copy"
"$VENV/bin/python" - "$VENV" <<'PY'
import sys, hfspec, hfspec.bench, hfspec.lowering, hfspec.integrations
venv = sys.argv[1]
assert hfspec.__file__.startswith(venv), f"hfspec imported from {hfspec.__file__}, not the venv {venv}"
from hfspec.testing import qwen_tokenizer
assert len(qwen_tokenizer()) > 150_000  # package data present
print("hfspec", hfspec.__version__, "from", hfspec.__file__)
PY
step "hfspec bench --tiny";          "$VENV/bin/hfspec" bench --tiny --no-progress --max-new-tokens 12 --out r/tiny.json >/dev/null
step "hfspec bench-grammar --tiny";  "$VENV/bin/hfspec" bench-grammar --tiny --no-progress --max-new-tokens 16 --out r/grammar.json >/dev/null
step "hfspec render";                "$VENV/bin/hfspec" render r/tiny.json --markdown B.md >/dev/null && grep -q "hfspec-bench:begin" B.md
step "hfspec conformance --data";    "$VENV/bin/hfspec" conformance --data "$REPO/tests/data/jsonschemabench" --limit 5 --no-progress \
                                       --out-json r/conformance.json --out-md conformance.md
step "examples/ray_extract.py --tiny"; "$VENV/bin/python" "$REPO/examples/ray_extract.py" --tiny --output "$WORK/out.jsonl"
echo "PASS: the installed hfspec ran its commands and the Ray example outside the checkout"
