#!/usr/bin/env bash
# Test hfspec against one (torch, transformers) pair in a fresh virtual environment.
#
#   scripts/check_versions.sh [--keep] [--untested] [--venv DIR] TORCH TRANSFORMERS [PYTEST_ARGS...]
#
#   scripts/check_versions.sh 2.13.0 5.19.0                 # the declared minimum, full suite
#   scripts/check_versions.sh 2.13.0 5.23.0 quick           # the fast subset (about 2-3 min on 2 cores)
#   scripts/check_versions.sh 2.13.0 5.23.0 tests/test_api.py -k stop
#   scripts/check_versions.sh --untested 2.13.0 5.24.0 quick  # a release outside the declared range
#
# What it does, from a clean checkout (no network but the package index, no GPU):
#   1. python -m venv DIR (default /tmp/hfspec-check-torchTORCH-tfTRANSFORMERS, removed first);
#   2. pip install torch==TORCH alone first, so pip takes it from where it is (on these machines the
#      local CPU wheel of 2.13.0) before anything can ask for a newer torch and pull a CUDA build;
#   3. pip install -e ".[dev]" with torch==TORCH transformers==TRANSFORMERS;
#   4. python -m pytest -q -x -p no:cacheprovider PYTEST_ARGS (default: the whole suite; "quick" is
#      the subset used for bisecting), from the repository root, and prints one PASS/FAIL line.
#
# --untested  TRANSFORMERS/TORCH outside pyproject's declared range (checking a candidate before
#             widening the range): installs hfspec's dependencies first, then forces the versions
#             asked for, and runs with HFSPEC_ALLOW_UNTESTED=1 so hfspec's import-time guard
#             (hfspec/compat.py) warns instead of refusing.
# --keep      keep the venv afterwards (it is about 2.4 GB with torch 2.13.0 CPU; 7 GB with a CUDA torch).
# --venv DIR  where to build the venv.  PYTHON=python3.11 picks the interpreter (default python3).
#
# Exit status: pytest's (0 = passed), or pip's when the install fails. The tested matrix and its
# results are in docs/compatibility.md.
set -euo pipefail

usage() { sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }

keep=0
untested=0
venv=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --keep) keep=1; shift ;;
    --untested) untested=1; shift ;;
    --venv) venv="$2"; shift 2 ;;
    -h|--help) usage ;;
    --) shift; break ;;
    -*) echo "unknown option $1" >&2; usage ;;
    *) break ;;
  esac
done
[[ $# -ge 2 ]] || usage
torch_version="$1"
tf_version="$2"
shift 2

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
venv="${venv:-/tmp/hfspec-check-torch${torch_version}-tf${tf_version}}"
python="${PYTHON:-python3}"

tests=("$@")
if [[ ${#tests[@]} -eq 0 ]]; then
  tests=()  # pyproject's testpaths: the whole suite
elif [[ "${tests[0]}" == "quick" ]]; then
  tests=(tests/test_greedy_identity.py tests/test_hf_parity.py tests/test_api.py tests/test_lowering.py
    tests/test_trees.py "${tests[@]:1}")
fi

cleanup() { if [[ $keep -eq 0 ]]; then rm -rf "$venv"; fi; }
trap cleanup EXIT

echo "== venv $venv ($("$python" --version))"
rm -rf "$venv"
"$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check)

start=$(date +%s)
"${pip[@]}" install -q "torch==${torch_version}"
if [[ $untested -eq 0 ]]; then
  "${pip[@]}" install -q -e ".[dev]" "torch==${torch_version}" "transformers==${tf_version}" || {
    echo "== install failed; a version outside pyproject's declared range needs --untested" >&2
    exit 1
  }
else
  "${pip[@]}" install -q -e ".[dev]" "torch==${torch_version}"
  # pip warns that hfspec's declared range is not met; that is the point of --untested
  "${pip[@]}" install -q "torch==${torch_version}" "transformers==${tf_version}"
  export HFSPEC_ALLOW_UNTESTED=1
fi
echo "== installed in $(($(date +%s) - start)) s:" \
  "$("$venv/bin/python" -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)')"

start=$(date +%s)
set +e
"$venv/bin/python" -m pytest -q -x -p no:cacheprovider "${tests[@]}"
rc=$?
set -e
result=$([[ $rc -eq 0 ]] && echo PASS || echo "FAIL (pytest exit $rc)")
echo "== torch ${torch_version} transformers ${tf_version} ${tests[*]:-(full suite)}: ${result} in $(($(date +%s) - start)) s"
exit $rc
