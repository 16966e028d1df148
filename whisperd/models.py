"""Whisper checkpoints on disk: where the configured model lives, fetching one, listing what is installed.

Named models live in ``model.download_root`` under whisper's own file names (``base.pt``,
``large-v3.pt``...). A fetched file gets a ``<file>.sha256`` beside it (``sha256sum`` format),
so a copy carried to a machine without network can be checked there (``whisperd model list``).

The supervisor imports this module for its start-up check and must never import torch, so
whisper's catalogue (``whisper._MODELS``: name -> URL whose path carries the file's SHA-256) is
read from whisper's source instead of imported. Only ``fetch`` and ``load`` import whisper.
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


@functools.cache
def catalogue() -> dict[str, str]:
    """whisper's ``_MODELS`` (name -> download URL), read from its source without importing torch."""
    spec = importlib.util.find_spec("whisper")
    if spec is None or spec.origin is None:
        raise ModelError("openai-whisper is not installed")
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_MODELS" for t in node.targets):
            return ast.literal_eval(node.value)
    raise ModelError(f"{spec.origin}: whisper's model catalogue (_MODELS) not found")


def is_path(name: str) -> bool:
    """``model.name`` is a checkpoint path rather than a model name."""
    return "/" in name or name.endswith(".pt")


def file_name(name: str) -> str:
    """The file a named model is stored as (whisper's own: ``turbo`` is ``large-v3-turbo.pt``)."""
    url = catalogue().get(name)
    return os.path.basename(urlparse(url).path) if url else f"{name}.pt"


def model_path(cfg: ModelConfig) -> Path:
    return Path(cfg.name) if is_path(cfg.name) else Path(cfg.download_root) / file_name(cfg.name)


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


def fetch_command(name: str) -> str:
    return f"whisperd model fetch {name}"


def missing_reason(cfg: ModelConfig) -> str | None:
    """Why the configured model cannot be loaded at start, or None (installed, or fetched on start)."""
    path = model_path(cfg)
    if path.is_file():
        return None
    if is_path(cfg.name):
        return f"model.name: {path} does not exist"
    if cfg.name not in catalogue():
        return (
            f"model.name: {cfg.name!r} is not a whisper model name ({', '.join(catalogue())}) and {path} does not exist"
        )
    if cfg.download:
        return None
    return (
        f"model {cfg.name!r} is not installed: {path} does not exist and model.download = false. "
        f"Copy {path.name} and {path.name}.sha256 into {path.parent}/ (fetch them on a machine with "
        f"network: `{fetch_command(cfg.name)} --root DIR`), or run `{fetch_command(cfg.name)}` here"
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


@dataclass(frozen=True)
class Installed:
    name: str
    path: Path
    size: int
    checksum: str


def installed(root: Path) -> list[Installed]:
    """Every checkpoint in ``root``, with its checksum state (reads each file once)."""
    if not root.is_dir():
        return []
    return [
        Installed(path.stem, path, path.stat().st_size, checksum_state(path, path.stem))
        for path in sorted(root.glob("*.pt"))
        if path.is_file()
    ]


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
