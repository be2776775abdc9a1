"""Shared fixtures: tiny in-process models (no hub), a padded batch, the vendored JSONSchemaBench."""

from __future__ import annotations

import os
import pathlib

import pytest
import torch

from hfspec.testing import perturbed_copy, tiny_model


@pytest.fixture(autouse=True)
def _single_thread_and_restore_patch():
    torch.set_num_threads(1)
    yield
    import hfspec

    hfspec.disable()


@pytest.fixture(scope="session")
def models():
    """{arch: (target, close draft, perfect draft)} for every tiny architecture."""
    out = {}
    for arch in ("llama", "qwen2", "gpt2"):
        target = tiny_model(arch, logit_scale=8.0, eos_token_id=None)
        out[arch] = (target, perturbed_copy(target, 0.01), target)
    return out


def padded_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Three prompts of lengths 6, 9 and 3, left-padded with pad id 0."""
    ids = torch.tensor(
        [[0, 0, 0, 5, 6, 7, 8, 5, 6], [4, 5, 6, 7, 8, 5, 6, 7, 9], [0, 0, 0, 0, 0, 0, 3, 2, 3]]
    )
    mask = (torch.arange(9)[None] >= torch.tensor([3, 0, 6])[:, None]).long()
    return ids, mask


@pytest.fixture(scope="session")
def jsonschemabench() -> pathlib.Path:
    """``$HFSPEC_JSONSCHEMABENCH`` if set, else the copy vendored in tests/data: a fresh clone runs
    every conformance test."""
    env = os.environ.get("HFSPEC_JSONSCHEMABENCH")
    path = pathlib.Path(env) if env else pathlib.Path(__file__).parent / "data" / "jsonschemabench"
    if not path.is_dir():
        raise FileNotFoundError(f"JSONSchemaBench folder {path} not found (check $HFSPEC_JSONSCHEMABENCH)")
    return path
