"""Models on disk: where the configured model lives, fetching one, listing what is installed.

openai-whisper's named models live in ``model.download_root`` under whisper's own file names
(``base.pt``, ``large-v3.pt``...); faster-whisper's are CTranslate2 directories there, named
``faster-whisper-<name>/`` (``model.bin``, ``config.json``, the tokenizer), as the model hub
ships them. A fetched model gets a ``.sha256`` beside its weights (``sha256sum`` format), so a
copy carried to a machine without network can be checked there (``whisperd model list``).

The supervisor imports this module for its start-up check and must never import torch or
ctranslate2, so the engines' catalogues (``whisper._MODELS``: name -> URL whose path carries the
file's SHA-256; ``faster_whisper.utils._MODELS``: name -> hub repository) are read from their
source instead of imported. Only ``load`` and ``fetch_ctranslate2`` import an engine.

Model files, their ``.sha256`` and download servers are treated as hostile: a known model name
is checked against OpenAI's own digest (a ``.sha256`` beside it cannot vouch for another file),
downloads are capped and streamed to a temporary file, and only regular files are opened
(without blocking), so a FIFO or a link to ``/dev/zero`` is reported instead of read forever.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import http.client
import importlib.util
import os
import re
import shutil
import stat
import sys
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlparse

from whisperd.config import ModelConfig

FETCH_TIMEOUT_S = 60.0  # per socket operation: a unit without network fails instead of hanging
# The most a download may be: OpenAI's file sizes (base.pt is 145 262 807 bytes) with a few percent
# to spare, by the size in the name; a checkpoint of another name can be at most MAX_MODEL_BYTES.
KNOWN_MAX_BYTES = {"tiny": 80_000_000, "base": 150_000_000, "small": 500_000_000, "medium": 1_600_000_000,
                   "turbo": 1_700_000_000, "large": 3_200_000_000}  # fmt: skip
MAX_MODEL_BYTES = 4_000_000_000
MAX_SIDECAR_BYTES = 4096
CHUNK_BYTES = 1 << 20
FETCH_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")  # the file name must fit NAME_MAX with room to spare
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
BAD_STATES = ("MISMATCH", "INVALID")  # model list exits 1 on these


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


def _mode(path: Path) -> int | None:
    """``stat``'s mode, or None where there is nothing usable (missing, a loop, a name too long)."""
    try:
        return os.stat(path).st_mode
    except (OSError, ValueError):
        return None


def is_regular(path: Path) -> bool:
    """A regular file (after symlinks): Path.is_file raises on a name too long for the system."""
    mode = _mode(path)
    return mode is not None and stat.S_ISREG(mode)


def is_directory(path: Path) -> bool:
    mode = _mode(path)
    return mode is not None and stat.S_ISDIR(mode)


def open_regular(path: Path) -> BinaryIO:
    """``path`` opened for reading if it is a regular file, else ModelError: opened without
    blocking (a FIFO would wait for a writer forever) and checked on the descriptor."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except (OSError, ValueError) as e:
        raise ModelError(f"{path}: cannot be read: {getattr(e, 'strerror', None) or e}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ModelError(f"{path}: not a regular file (a FIFO, a device or a directory)")
    return os.fdopen(fd, "rb")


def is_installed(cfg: ModelConfig) -> bool:
    path = model_path(cfg)
    return is_regular(path / CT2_WEIGHTS) if is_ctranslate2(cfg) else is_regular(path)


def compute_type(cfg: ModelConfig, device: str) -> str:
    """CTranslate2's compute type: ``auto`` is int8 on a CPU, float16 on a GPU."""
    if cfg.compute_type != "auto":
        return cfg.compute_type
    return "float16" if device.startswith("cuda") else "int8"


def sha256_in_url(url: str) -> str:
    """The SHA-256 that whisper's download URLs carry as their last directory."""
    try:
        parts = urlparse(url).path.split("/")
    except ValueError:  # "http://[::1"
        raise ModelError(f"{url}: not a URL") from None
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


def known_sha256(name: str | None) -> str | None:
    """OpenAI's digest for a model name of whisper's catalogue."""
    url = catalogue().get(name) if name else None
    return sha256_in_url(url) if url else None


def expected_sha256(path: Path, name: str | None) -> str | None:
    """The digest ``path`` should have: OpenAI's for a known model ``name`` stored under its own
    file name (a ``.sha256`` beside it, which whoever wrote the file wrote too, cannot make another
    file that model), else the one in its ``.sha256`` file. ModelError for a ``.sha256`` that
    holds no digest or is not a regular file."""
    if name in catalogue() and path.name == file_name(name):
        return known_sha256(name)
    sidecar = _sidecar(path)
    if not os.path.lexists(sidecar):
        return None
    with open_regular(sidecar) as f:
        words = f.read(MAX_SIDECAR_BYTES).decode("utf-8", errors="replace").split()
    if not words or not SHA256_HEX.fullmatch(words[0].lower()):
        raise ModelError(f"{sidecar}: not a SHA-256 digest (sha256sum format: 64 hex digits, two spaces, the file)")
    return words[0].lower()


def sha256_of(path: Path) -> str:
    """SHA-256 of a regular file, read in chunks (ModelError for anything else)."""
    with open_regular(path) as f:
        try:
            return hashlib.file_digest(f, "sha256").hexdigest()
        except OSError as e:
            raise ModelError(f"{path}: cannot be read: {e.strerror or e}") from None


def checksum_state(path: Path, name: str | None) -> str:
    """``ok``, ``MISMATCH`` or ``unverified`` (no known digest for this file); ModelError when
    the file or its ``.sha256`` cannot be used."""
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
        if is_ctranslate2(cfg) and is_directory(path):
            return f"model.name: {path} is not a CTranslate2 model directory (no {CT2_WEIGHTS})"
        if _mode(path) is not None:
            return f"model.name: {path} is not a regular file"
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
    """Download ``name`` into ``root``, SHA-256 checked, atomically.

    The file streams into a temporary directory inside ``root``, hashed as it comes, at most
    ``max_bytes(name)``, and is renamed into place only once its digest matches the one in the URL
    (for a known name, OpenAI's); anything refused or cut off leaves nothing behind.
    """
    check_fetch_name(name, root)
    url = url or url_for(name, mirror)
    digest = sha256_in_url(url)
    known = known_sha256(name)
    if known is not None and digest != known:
        raise ModelError(
            f"{url}: refused: {name} is OpenAI's model with SHA-256 {known}, and this URL is for another file "
            f"({digest}); install another checkpoint under a name of its own"
        )
    target = root / file_name(name)
    if is_regular(target) and sha256_of(target) == digest:
        _write_sidecar(target, digest)
        return target
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".fetch-", dir=root))
    except OSError as e:
        raise ModelError(f"{root}: cannot create the download there: {e.strerror or e}") from None
    try:
        part = tmp / target.name
        download(url, part, digest, max_bytes(name))
        os.replace(part, target)
        _write_sidecar(target, digest)
    except OSError as e:
        raise ModelError(f"{url}: cannot install it as {target}: {e.strerror or e}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def check_fetch_name(name: str, root: Path) -> None:
    shown = repr(name) if len(name) <= 60 else repr(name[:57] + "...")
    if is_path(name) or not FETCH_NAME.fullmatch(name):
        raise ModelError(
            f"{shown}: a model name, not a path: 1-100 letters, digits, '.', '_' or '-' (the file goes into {root})"
        )


def max_bytes(name: str) -> int:
    """The largest download accepted for ``name``: its size class's for OpenAI's models."""
    if name not in catalogue():
        return MAX_MODEL_BYTES
    stem = file_name(name).removesuffix(".pt")
    size = "turbo" if stem.endswith("turbo") else stem.split(".")[0].split("-")[0]
    return KNOWN_MAX_BYTES.get(size, MAX_MODEL_BYTES)


def download(url: str, dest: Path, digest: str, cap: int) -> None:
    """Stream ``url`` into the new file ``dest``: at most ``cap`` bytes, the SHA-256 ``digest``,
    a progress bar on stderr. ModelError on anything else (dest may be left for the caller)."""
    if urlparse(url).scheme not in ("http", "https"):
        raise ModelError(f"{url}: only http:// and https:// URLs are fetched")
    request = urllib.request.Request(url, headers={"User-Agent": "whisperd"})
    try:
        with urllib.request.urlopen(request, timeout=FETCH_TIMEOUT_S) as response, open(dest, "xb") as out:
            length = content_length(url, response.headers.get("Content-Length"), cap)
            got = _stream(url, response, out, length, cap)
            out.flush()
            os.fsync(out.fileno())
    except (OSError, http.client.HTTPException, ValueError) as e:
        raise ModelError(f"{url}: download failed: {e}") from None
    if length is not None and got[0] != length:
        raise ModelError(f"{url}: download failed: {got[0]} of {length} bytes arrived")
    if got[1] != digest:
        raise ModelError(f"{url}: refused: its SHA-256 {got[1]} is not {digest}, the one in the URL")


def content_length(url: str, value: str | None, cap: int) -> int | None:
    """The announced size (None: not announced, the cap still holds), refused above ``cap``."""
    if value is None:
        return None
    text = value.strip()
    if not (text.isascii() and text.isdigit() and len(text) <= 20):
        raise ModelError(f"{url}: refused: the server sent Content-Length {value[:40]!r}, not a number")
    if int(text) > cap:
        raise ModelError(f"{url}: refused: {int(text)} bytes, more than the {cap} bytes this model can be")
    return int(text)


def _stream(url: str, response: Any, out: BinaryIO, length: int | None, cap: int) -> tuple[int, str]:
    """Copy the body chunk by chunk; (bytes, hex SHA-256)."""
    from tqdm import tqdm

    hasher, got = hashlib.sha256(), 0
    with tqdm(total=length, ncols=80, unit="iB", unit_scale=True, unit_divisor=1024, file=sys.stderr) as bar:
        while chunk := response.read(CHUNK_BYTES):
            got += len(chunk)
            if got > cap:
                raise ModelError(f"{url}: refused: more than the {cap} bytes this model can be")
            hasher.update(chunk)
            out.write(chunk)
            bar.update(len(chunk))
    return got, hasher.hexdigest()


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
    if is_regular(target / CT2_WEIGHTS):
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
    checksum: str  # ok, MISMATCH, unverified, or INVALID (then ``problem`` says why)
    problem: str | None = None


def _size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except (OSError, ValueError):
        return 0


def _state(weights: Path, name: str | None) -> tuple[str, str | None]:
    if not is_regular(weights):
        return "INVALID", f"{weights}: not a regular file (a FIFO, a device, a directory or a broken link)"
    try:
        return checksum_state(weights, name), None
    except ModelError as e:
        return "INVALID", str(e)


def installed(root: Path) -> list[Installed]:
    """Every model in ``root`` (checkpoints and CTranslate2 directories), with its checksum state
    (reads each regular file once; anything else named like a model is INVALID, never opened)."""
    if not is_directory(root):
        return []
    found = [
        Installed(path.stem, "openai-whisper", path, _size(path), *_state(path, path.stem))
        for path in sorted(root.glob("*.pt"))
        if not is_directory(path)
    ]
    for weights in sorted(root.glob(f"*/{CT2_WEIGHTS}")):
        directory = weights.parent
        size = sum(_size(f) for f in directory.iterdir() if is_regular(f))
        name = directory.name.removeprefix(CT2_PREFIX)
        found.append(Installed(name, "faster-whisper", directory, size, *_state(weights, None)))
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
    if not is_regular(path):
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
