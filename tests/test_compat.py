"""The version guard (hfspec/compat.py): in range passes, outside it raises naming the versions, the override warns."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from packaging.requirements import Requirement

from hfspec import compat


@pytest.fixture
def versions(monkeypatch):
    """Set the reported versions (in range by default) with the override unset."""
    monkeypatch.delenv(compat.OVERRIDE_ENV, raising=False)

    def set_versions(transformers_version="5.20.0", torch_version="2.13.0+cpu"):
        monkeypatch.setattr(transformers, "__version__", transformers_version)
        monkeypatch.setattr(torch, "__version__", torch_version)

    set_versions()
    return set_versions


@pytest.mark.parametrize(
    "tf, th",
    [("5.19.0", "2.13.0+cpu"), ("5.23.0", "2.14.1+cu130"), ("5.23.1.dev0", "2.13.0"), ("5.20.2", "2.14.0"), ("5.24.0", "2.13.0+cpu")],
)
def test_in_range_passes_silently(versions, recwarn, tf, th):
    versions(tf, th)
    compat.check_versions()
    assert not [w for w in recwarn if issubclass(w.category, compat.UntestedVersionWarning)]


@pytest.mark.parametrize(
    "tf", ["5.18.0", "5.13.1", "5.0.0", "4.57.6", "5.25.0", "5.25.0.dev0", "6.0.0", "not-a-version"]
)
def test_untested_transformers_raises_naming_versions(versions, tf):
    versions(transformers_version=tf)
    with pytest.raises(compat.UntestedVersionError) as info:
        compat.check_versions()
    message = str(info.value)
    assert f"transformers {tf} is installed" in message
    assert f"transformers{compat.TESTED['transformers']}" in message
    assert f"{compat.OVERRIDE_ENV}=1" in message
    assert "torch 2.13.0+cpu is installed" not in message  # only the package out of range is named


@pytest.mark.parametrize("th", ["2.12.1+cpu", "2.15.0", "2.15.0.dev20260101"])
def test_untested_torch_raises_naming_versions(versions, th):
    versions(torch_version=th)
    with pytest.raises(
        compat.UntestedVersionError,
        match=rf"torch {re.escape(th)} is installed; hfspec is tested with torch>=",
    ):
        compat.check_versions()


def test_both_out_of_range_are_named(versions):
    versions("5.25.0", "2.15.0")
    with pytest.raises(compat.UntestedVersionError, match=r"transformers 5\.25\.0 .*; torch 2\.15\.0 "):
        compat.check_versions()


def test_error_is_an_import_error(versions):
    """``import hfspec`` fails with it, so code that treats hfspec as optional (except ImportError) still works."""
    assert issubclass(compat.UntestedVersionError, ImportError)


def test_override_warns_instead(versions, monkeypatch):
    versions(transformers_version="5.25.0")
    monkeypatch.setenv(compat.OVERRIDE_ENV, "1")
    with pytest.warns(
        compat.UntestedVersionWarning, match=r"transformers 5\.25\.0 is installed.*running untested"
    ):
        compat.check_versions()


def test_override_zero_still_raises(versions, monkeypatch):
    versions(transformers_version="5.25.0")
    monkeypatch.setenv(compat.OVERRIDE_ENV, "0")
    with pytest.raises(compat.UntestedVersionError):
        compat.check_versions()


def _run_import(env_extra: dict[str, str]) -> subprocess.CompletedProcess:
    """``import hfspec`` in a fresh interpreter whose transformers reports 5.13.0 (below the range)."""
    env = {k: v for k, v in os.environ.items() if k != compat.OVERRIDE_ENV} | env_extra
    code = "import transformers; transformers.__version__ = '5.13.0'; import hfspec; print('imported')"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)


def test_import_hfspec_runs_the_check_first():
    """The check runs before the modules that import transformers internals, so the error is the clear one."""
    done = _run_import({})
    assert done.returncode != 0
    assert "UntestedVersionError: transformers 5.13.0 is installed" in done.stderr
    done = _run_import({compat.OVERRIDE_ENV: "1"})
    assert done.returncode == 0, done.stderr
    assert "imported" in done.stdout and "UntestedVersionWarning" in done.stderr


def test_tested_ranges_match_pyproject():
    """compat.TESTED and pyproject's dependencies declare the same ranges."""
    tomllib = pytest.importorskip("tomllib")
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    if not pyproject.exists():
        pytest.skip("installed without the source tree")
    deps = [Requirement(d) for d in tomllib.loads(pyproject.read_text())["project"]["dependencies"]]
    declared = {r.name: r.specifier for r in deps if r.name in compat.TESTED}
    from packaging.specifiers import SpecifierSet

    assert declared == {name: SpecifierSet(spec) for name, spec in compat.TESTED.items()}


def test_cache_argument_follows_the_forward_signature():
    """transformers 5.24 renamed the model's cache argument; hfspec passes it under the name the forward takes."""
    from hfspec.kv import cache_argument

    class New(torch.nn.Module):
        def forward(self, input_ids, cache=None, **kwargs): ...

    class Old(torch.nn.Module):
        def forward(self, input_ids, past_key_values=None, **kwargs): ...

    assert cache_argument(New()) == "cache"
    assert cache_argument(Old()) == "past_key_values"
