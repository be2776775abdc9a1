"""The same plans on a CUDA device: greedy identity and zero recompiles for ``backend="cudagraphs"``
(and the static store run eagerly on the GPU). Skipped without CUDA: CI and these CPU machines have
none. ``benchmarks/gpu_check.sh`` runs this file on a device machine (docs/lowering.md, "On a GPU").
"""

from __future__ import annotations

import copy

import pytest
import torch

import hfspec
from tests.test_lowering import CASES, _inputs, assert_plan_matches_generate

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def cuda_models(models):
    return {arch: tuple(copy.deepcopy(m).cuda() for m in pair[:2]) for arch, pair in models.items()}


@pytest.mark.parametrize("arch,batch", CASES)
@pytest.mark.parametrize("backend", ["eager", "cudagraphs"])
@pytest.mark.parametrize("proposer", ["draft", "lookup"])
def test_gpu_plan_is_token_identical(cuda_models, arch, batch, backend, proposer):
    target, draft = cuda_models[arch]
    strategy = hfspec.DraftModel(draft, num_tokens=3) if proposer == "draft" else hfspec.PromptLookup(num_tokens=4)
    plan = hfspec.compile(target, strategy, backend=backend, batch_size=batch, capacity=128)
    assert_plan_matches_generate(target, plan, batch, (arch, batch, backend, proposer), device="cuda")


def test_cudagraphs_plan_never_recompiles(cuda_models):
    import torch._dynamo.utils as dynamo_utils

    target, draft = cuda_models["llama"]
    plan = hfspec.compile(target, hfspec.DraftModel(draft, num_tokens=3), backend="cudagraphs", batch_size=3,
                          capacity=128)
    kwargs = dict(**_inputs(3, "cuda"), max_new_tokens=12, do_sample=False)
    assert torch.equal(target.generate(**kwargs, custom_generate=hfspec.generate, assistant_strategy=plan),
                       target.generate(**kwargs))
    assert plan.compiles == 2
    graphs = dynamo_utils.counters["stats"]["unique_graphs"]
    calls = plan.target.graph_calls
    for max_new in (20, 5):
        kwargs = dict(**_inputs(3, "cuda"), max_new_tokens=max_new, do_sample=False)
        assert torch.equal(target.generate(**kwargs, custom_generate=hfspec.generate, assistant_strategy=plan),
                           target.generate(**kwargs))
    assert plan.target.graph_calls > calls + 5
    assert plan.compiles == 2 and dynamo_utils.counters["stats"]["unique_graphs"] == graphs
