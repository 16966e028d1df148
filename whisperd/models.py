"""Models on disk: where the configured model lives, fetching one, listing what is installed.

openai-whisper's named models live in ``model.download_root`` under whisper's own file names
(``base.pt``, ``large-v3.pt``...); faster-whisper's are CTranslate2 directories there, named
``faster-whisper-<name>/`` (``model.bin``, ``config.json``, the tokenizer), as the model hub
ships them. A fetched model gets a ``.sha256`` beside its weights (``sha256sum`` format), so a
copy carried to a machine without network can be checked there (``whisperd model list``).

The supervisor imports this module for its start-up check and must never import torch or
ctranslate2, so the engines' catalogues (``whisper._MODELS``: name -> URL whose path carries the
file's SHA-256; ``faster_whisper.utils._MODELS``: name -> hub repository) are read from their
source instead of imported. Only ``fetch`` and ``load`` import an engine.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import os
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from whisperd.config import ModelConfig

FETCH_TIMEOUT_S = 60.0  # per socket operation: a unit without network fails instead of hanging


class ModelError(RuntimeError):
    """The model cannot be used or fetched; str() is the message for the operator."""


CT2_PREFIX = "faster-whisper-"  # a named CTranslate2 model's directory, as the hub names its repositories
CT2_WEIGHTS = "model.bin"


@functools.cache
def _models_table(module: str) -> dict[str, str]:
    """``_MODELS`` of ``module``, read from its source: importing it would import torch or ctranslate2."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ModelError(f"{module.split('.')[0]} is not installed")
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_MODELS" for t in node.targets):
            return ast.literal_eval(node.value)
    raise ModelError(f"{spec.origin}: the model catalogue (_MODELS) not found")


def catalogue() -> dict[str, str]:
    """whisper's ``_MODELS``: name -> download URL."""
    return _models_table("whisper")


def hub_catalogue() -> dict[str, str]:
    """faster-whisper's ``_MODELS``: name -> model hub repository of its CTranslate2 conversion."""
    return _models_table("faster_whisper.utils")


def is_ctranslate2(cfg: ModelConfig) -> bool:
    return cfg.engine == "faster-whisper"


def is_path(name: str) -> bool:
    """``model.name`` is a checkpoint path rather than a model name."""
    return "/" in name or name.endswith(".pt")


def file_name(name: str) -> str:
    """The file a named model is stored as (whisper's own: ``turbo`` is ``large-v3-turbo.pt``)."""
    url = catalogue().get(name)
    return os.path.basename(urlparse(url).path) if url else f"{name}.pt"


def model_path(cfg: ModelConfig) -> Path:
    """The configured model's checkpoint file (openai-whisper) or CTranslate2 directory (faster-whisper)."""
    if is_path(cfg.name):
        return Path(cfg.name)
    if is_ctranslate2(cfg):
        return Path(cfg.download_root) / f"{CT2_PREFIX}{cfg.name}"
    return Path(cfg.download_root) / file_name(cfg.name)


def is_installed(cfg: ModelConfig) -> bool:
    path = model_path(cfg)
    return (path / CT2_WEIGHTS).is_file() if is_ctranslate2(cfg) else path.is_file()


def compute_type(cfg: ModelConfig, device: str) -> str:
    """CTranslate2's compute type: ``auto`` is int8 on a CPU, float16 on a GPU."""
    if cfg.compute_type != "auto":
        return cfg.compute_type
    return "float16" if device.startswith("cuda") else "int8"


def sha256_in_url(url: str) -> str:
    """The SHA-256 that whisper's download URLs carry as their last directory."""
    parts = urlparse(url).path.split("/")
    digest = parts[-2] if len(parts) >= 3 else ""
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ModelError(f"{url}: the URL must end in /<sha256>/<file>.pt, as whisper's download URLs do")
    return digest


def url_for(name: str, mirror: str = "") -> str:
    """Where ``name`` is fetched from: whisper's own URL, or the same ``<sha256>/<file>`` under a mirror."""
    url = catalogue().get(name)
    if url is None:
        raise ModelError(f"{name!r} is not a whisper model name ({', '.join(catalogue())}); give its URL with --url")
    if not mirror:
        return url
    return f"{mirror.rstrip('/')}/{sha256_in_url(url)}/{file_name(name)}"


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def expected_sha256(path: Path, name: str | None) -> str | None:
    """The digest ``path`` should have: from its ``.sha256`` file, else whisper's for model ``name``."""
    sidecar = _sidecar(path)
    if sidecar.is_file():
        return sidecar.read_text(encoding="utf-8").split()[0].lower()
    if name in catalogue() and path.name == file_name(name):
        return sha256_in_url(catalogue()[name])
    return None


def sha256_of(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def checksum_state(path: Path, name: str | None) -> str:
    """``ok``, ``MISMATCH`` or ``unverified`` (no known digest for this file)."""
    expected = expected_sha256(path, name)
    if expected is None:
        return "unverified"
    return "ok" if sha256_of(path) == expected else "MISMATCH"


def fetch_command(name: str, engine: str = "openai-whisper") -> str:
    return f"whisperd model fetch {name}" + (f" --engine {engine}" if engine != "openai-whisper" else "")


def missing_reason(cfg: ModelConfig) -> str | None:
    """Why the configured model cannot be loaded at start, or None (installed, or fetched on start)."""
    path = model_path(cfg)
    if is_installed(cfg):
        return None
    if is_path(cfg.name):
        if is_ctranslate2(cfg) and path.is_dir():
            return f"model.name: {path} is not a CTranslate2 model directory (no {CT2_WEIGHTS})"
        return f"model.name: {path} does not exist"
    known = hub_catalogue() if is_ctranslate2(cfg) else catalogue()
    if cfg.name not in known:
        names = ", ".join(known)
        kind = "faster-whisper" if is_ctranslate2(cfg) else "whisper"
        return f"model.name: {cfg.name!r} is not a {kind} model name ({names}) and {path} does not exist"
    if cfg.download:
        return None
    command = fetch_command(cfg.name, cfg.engine)
    what = f"the directory {path.name}/" if is_ctranslate2(cfg) else f"{path.name} and {path.name}.sha256"
    return (
        f"model {cfg.name!r} is not installed: {path} does not exist and model.download = false. "
        f"Copy {what} into {path.parent}/ (fetch on a machine with network: `{command} --root DIR`), "
        f"or run `{command}` here"
    )


def fetch(name: str, root: Path, url: str | None = None, mirror: str = "") -> Path:
    """Download ``name`` into ``root`` with whisper's own SHA-256 check and progress bar, atomically.

    The file is downloaded into a temporary directory inside ``root`` and renamed into place
    only once its digest matches the one in the URL; a corrupted download leaves nothing behind.
    """
    import whisper

    if is_path(name) or name.startswith(".") or not name.strip():
        raise ModelError(f"{name!r}: a model name, not a path (the file goes into {root})")
    url = url or url_for(name, mirror)
    digest = sha256_in_url(url)
    target = root / (file_name(name) if name in catalogue() else f"{name}.pt")
    if target.is_file() and sha256_of(target) == digest:
        _write_sidecar(target, digest)
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".fetch-", dir=root))
    previous_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(FETCH_TIMEOUT_S)
    try:
        downloaded = Path(whisper._download(url, str(tmp), False))
        os.replace(downloaded, target)
        _write_sidecar(target, digest)
    except RuntimeError as e:  # whisper's own checksum error
        raise ModelError(f"{url}: refused: {e}") from None
    except OSError as e:
        raise ModelError(f"{url}: download failed: {e}") from None
    finally:
        socket.setdefaulttimeout(previous_timeout)
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _write_sidecar(path: Path, digest: str) -> None:
    tmp = _sidecar(path).with_name(_sidecar(path).name + ".tmp")
    tmp.write_text(f"{digest}  {path.name}\n", encoding="utf-8")
    os.replace(tmp, _sidecar(path))


def fetch_ctranslate2(name: str, root: Path) -> Path:
    """Download faster-whisper's CTranslate2 model ``name`` from the model hub into
    ``root/faster-whisper-<name>/``, atomically, and record its weights' SHA-256 beside them."""
    from faster_whisper.utils import download_model

    if name not in hub_catalogue():
        raise ModelError(f"{name!r} is not a faster-whisper model name ({', '.join(hub_catalogue())})")
    target = root / f"{CT2_PREFIX}{name}"
    if (target / CT2_WEIGHTS).is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".fetch-", dir=root))
    try:
        download_model(name, output_dir=str(tmp))
        weights = tmp / CT2_WEIGHTS
        _write_sidecar(weights, sha256_of(weights))
        os.replace(tmp, target)
    except Exception as e:  # huggingface_hub raises its own errors for no network, 404, ...
        raise ModelError(f"{hub_catalogue()[name]}: download failed: {e}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


@dataclass(frozen=True)
class Installed:
    name: str
    engine: str
    path: Path
    size: int
    checksum: str


def installed(root: Path) -> list[Installed]:
    """Every model in ``root`` (checkpoints and CTranslate2 directories), with its checksum state
    (reads each file once)."""
    if not root.is_dir():
        return []
    found = [
        Installed(path.stem, "openai-whisper", path, path.stat().st_size, checksum_state(path, path.stem))
        for path in sorted(root.glob("*.pt"))
        if path.is_file()
    ]
    for weights in sorted(root.glob(f"*/{CT2_WEIGHTS}")):
        directory = weights.parent
        size = sum(f.stat().st_size for f in directory.iterdir() if f.is_file())
        name = directory.name.removeprefix(CT2_PREFIX)
        found.append(Installed(name, "faster-whisper", directory, size, checksum_state(weights, None)))
    return found


def ctranslate2_dir(cfg: ModelConfig) -> Path:
    """The configured CTranslate2 model directory, fetched first when allowed and checked."""
    path = model_path(cfg)
    if not is_installed(cfg):
        reason = missing_reason(cfg)
        if reason:
            raise ModelError(reason)
        return fetch_ctranslate2(cfg.name, Path(cfg.download_root))
    if checksum_state(path / CT2_WEIGHTS, None) == "MISMATCH":
        raise ModelError(
            f"{path / CT2_WEIGHTS}: SHA-256 does not match {expected_sha256(path / CT2_WEIGHTS, None)}: the file "
            "is damaged; delete the directory and fetch it again"
        )
    return path


def load(cfg: ModelConfig, device: str) -> Any:
    """The configured model, fetched first when allowed; with its real alignment heads.

    Loaded by path, so whisper does not re-download a file whose digest is not OpenAI's (a
    mirror's or a converted checkpoint). whisper gives a checkpoint loaded by path generic
    alignment heads, which misplace word timestamps: the checkpoint's own ``alignment_heads``
    (as whisper encodes them) are used, else whisper's table for a known model name.
    """
    import torch
    import whisper

    path = model_path(cfg)
    known_as = None if is_path(cfg.name) else cfg.name
    if not path.is_file():
        reason = missing_reason(cfg)
        if reason:
            raise ModelError(reason)
        fetch(cfg.name, Path(cfg.download_root), mirror=cfg.mirror)
    elif checksum_state(path, known_as) == "MISMATCH":
        raise ModelError(
            f"{path}: SHA-256 does not match {expected_sha256(path, known_as)}: the file is damaged or not "
            "the model it is named after; delete it and fetch it again"
        )
    model = whisper.load_model(str(path), device=device)
    heads = torch.load(path, map_location="cpu", mmap=True, weights_only=True).get("alignment_heads")
    if heads is None and known_as is not None:
        heads = whisper._ALIGNMENT_HEADS.get(known_as)
    if heads is not None:
        model.set_alignment_heads(heads)
    return model
