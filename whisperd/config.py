"""Configuration: one TOML file, read with tomllib, checked strictly before anything starts.

Every key has a default, so a file of comments only is a valid configuration (an empty one is
refused: more likely a truncated write than a wish for every default). A typo or a wrong type
stops the start with one line that names the key, instead of being silently ignored; a file that
cannot be read or parsed at all is a ConfigError too, so a reload keeps the running configuration.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import stat
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from whisperd.contract import FORMATS

DEFAULT_PATH = Path("/etc/whisperd/whisperd.toml")
ENV_VAR = "WHISPERD_CONFIG"
ENGINES = ("openai-whisper", "faster-whisper")
# CTranslate2 compute types (faster-whisper); auto = int8 on a CPU, float16 on a GPU.
COMPUTE_TYPES = ("auto", "int8", "int8_float32", "int8_float16", "int8_bfloat16", "int16", "float16", "bfloat16",
                 "float32")  # fmt: skip


class ConfigError(ValueError):
    """A configuration problem; str() is the one-line message shown to the operator.

    Messages quote the bad value, so passwords in URLs are hidden here, once for every caller.
    """

    def __init__(self, message: str) -> None:
        from whisperd.logs import redact

        super().__init__(redact(message))


def _positive(v: Any) -> bool:
    return v > 0


def _non_negative(v: Any) -> bool:
    return v >= 0


def _digits(v: str) -> bool:
    """ASCII digits only: str.isdigit() also accepts "²" and "١", which int() then refuses or misreads."""
    return v.isascii() and v.isdigit()


def _device(v: str) -> bool:
    if v in ("auto", "cpu", "cuda"):
        return True
    return v.startswith("cuda:") and _digits(v[5:])


def _scheme(v: str) -> str:
    """The URL's scheme, or "" when urllib cannot parse it: ``[::1`` raises ValueError, and so does
    the port of ``amqp://user:pa/ss@host`` (an unencoded "/", "#" or "?" in the password ends the
    host part, and the rest of ``user:pa`` is taken for the port: pika would fail on it later and
    print that part of the password in its error)."""
    try:
        parsed = urlparse(v)
        parsed.port  # noqa: B018 (it parses the port)
    except ValueError:
        return ""
    return parsed.scheme


def _amqp_url(v: str) -> bool:
    return _scheme(v) in ("amqp", "amqps")


def _queue_name(v: str) -> bool:
    return 0 < len(v.encode()) <= 255 and not v.startswith("amq.")


def _formats(v: list) -> bool:
    return bool(v) and all(f in FORMATS for f in v) and len(set(v)) == len(v)


def listen_ok(v: str) -> bool:
    """host:port (host may be empty or a bracketed IPv6 address); "" means off."""
    if v == "":
        return True
    host, sep, port = v.rpartition(":")
    return bool(sep) and _digits(port) and 0 < int(port) < 65536 and "/" not in host


def _http_url_or_empty(v: str) -> bool:
    return v == "" or (_scheme(v) in ("http", "https") and bool(urlparse(v).netloc))


def _abs_path(v: str) -> bool:
    """Absolute, and without a NUL byte (TOML's "\u0000"), which no system call accepts."""
    return os.path.isabs(v) and "\0" not in v


def _abs_or_empty(v: str) -> bool:
    return v == "" or _abs_path(v)


def split_listen(v: str) -> tuple[str, int]:
    """ "host:port" -> (host, port); an empty host means all interfaces."""
    host, _, port = v.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


def _log_level(v: str) -> bool:
    return v.upper() in ("DEBUG", "INFO", "WARNING", "ERROR")


def key(default: Any, check: Callable[[Any], bool] | None = None, why: str = "", **kw: Any) -> Any:
    """A config key: its default, and a check with the reason shown when it fails."""
    meta = {"check": check, "why": why}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class BrokerConfig:
    url: str = key("amqp://guest:guest@localhost:5672/%2F", _amqp_url, "must be an amqp:// or amqps:// URL")
    urls: list = key(
        [], lambda v: all(isinstance(x, str) and _amqp_url(x) for x in v), "must be a list of amqp:// or amqps:// URLs"
    )
    job_queue: str = key("whisperd.jobs", _queue_name, "must be 1-255 bytes and not start with 'amq.'")
    result_queue: str = key("whisperd.results", _queue_name, "must be 1-255 bytes and not start with 'amq.'")
    prefetch: int = key(1, _positive, "must be >= 1")
    heartbeat: int = key(60, _non_negative, "must be >= 0 seconds (0 disables heartbeats)")
    max_attempts: int = key(3, _positive, "must be >= 1")
    reconnect_max_s: float = key(30.0, _positive, "must be > 0 seconds")
    reply_to_prefixes: list = key(
        [],
        lambda v: all(isinstance(x, str) and x for x in v),
        "must be a list of non-empty queue-name prefixes (empty = any queue but whisperd's own)",
    )


@dataclass
class ModelConfig:
    engine: str = key("openai-whisper", lambda v: v in ENGINES, f"must be one of {list(ENGINES)}")
    name: str = key("small", lambda v: bool(v.strip()), "must not be empty")
    download_root: str = key("/var/lib/whisperd/models")
    device: str = key("auto", _device, "must be auto, cpu, cuda or cuda:N")
    fp16: bool = key(True)
    download: bool = key(True)
    mirror: str = key("", _http_url_or_empty, "must be an http:// or https:// URL, or empty for OpenAI's")
    compute_type: str = key("auto", lambda v: v in COMPUTE_TYPES, f"must be one of {list(COMPUTE_TYPES)}")
    batch_size: int = key(0, lambda v: 0 <= v <= 64, "must be between 0 and 64 (0 = one window at a time)")


@dataclass
class StorageConfig:
    media_root: str = key("/var/lib/whisperd/media", _abs_path, "must be an absolute path")
    results_dir: str = key("/var/lib/whisperd/results", _abs_path, "must be an absolute path")


@dataclass
class WorkersConfig:
    count: int = key(1, lambda v: 1 <= v <= 256, "must be between 1 and 256")
    threads: int = key(0, _non_negative, "must be >= 0 (0 = cores / count)")
    drain_timeout: float = key(600.0, _positive, "must be > 0 seconds")
    timeout: float = key(60.0, _positive, "must be > 0 seconds")
    ready_timeout: float = key(600.0, _positive, "must be > 0 seconds")
    boot_attempts: int = key(3, _positive, "must be >= 1")
    max_jobs: int = key(0, _non_negative, "must be >= 0 (0 = never recycle)")
    max_jobs_jitter: int = key(0, _non_negative, "must be >= 0")
    max_rss_mb: int = key(0, _non_negative, "must be >= 0 (0 = no limit)")
    hard_rss_mb: int = key(-1, lambda v: v >= -1, "must be >= 0 (0 = no limit), or -1 (derived from model and limits)")


@dataclass
class LimitsConfig:
    max_file_mb: float = key(2048.0, _positive, "must be > 0")
    max_duration_s: float = key(4 * 3600.0, _positive, "must be > 0 seconds")
    job_timeout_s: float = key(0.0, _non_negative, "must be >= 0 seconds (0 = scaled to audio length)")
    max_job_bytes: int = key(64 * 1024, lambda v: 1024 <= v <= 16 * 2**20, "must be between 1024 and 16 MiB")


def _within(low: float, high: float) -> Callable[[Any], bool]:
    """A closed range; NaN and infinities (TOML and Python's JSON accept both) fall outside it."""
    return lambda v: low <= v <= high


@dataclass
class TranscribeConfig:
    formats: list = key(["json", "txt"], _formats, f"must be a non-empty list of distinct values from {list(FORMATS)}")
    beam_size: int = key(0, _non_negative, "must be >= 0 (0 = greedy, whisper's default)")
    # The speech gate (whisperd.speech): Silero VAD before Whisper.
    vad: bool = key(True)
    vad_threshold: float = key(0.5, _within(0.01, 0.99), "must be between 0.01 and 0.99")
    vad_min_silence_ms: int = key(2000, _within(0, 60_000), "must be between 0 and 60000 ms")
    vad_speech_pad_ms: int = key(400, _within(0, 5_000), "must be between 0 and 5000 ms")
    # Whisper's own hallucination guards; a job may override each (contract.GUARD_OPTIONS).
    condition_on_previous_text: bool = key(False)  # whisper: true; measured in bench/vad.py (README)
    no_speech_threshold: float = key(0.6, _within(0.0, 1.0), "must be between 0 and 1")
    compression_ratio_threshold: float = key(2.4, _within(1.0, 100.0), "must be between 1 and 100")
    hallucination_silence_threshold: float = key(
        0.0, _within(0.0, 30.0), "must be between 0 and 30 seconds (0 = off; used with word timestamps)"
    )


@dataclass
class EventsConfig:
    progress: bool = key(False)


@dataclass
class ControlConfig:
    socket: str = key("", _abs_or_empty, "must be an absolute path, or empty for the default")


@dataclass
class MetricsConfig:
    listen: str = key("", listen_ok, "must be host:port (e.g. 127.0.0.1:9464), or empty to turn metrics off")


@dataclass
class ApiConfig:
    listen: str = key("127.0.0.1:8080", lambda v: v != "" and listen_ok(v), "must be host:port (e.g. 127.0.0.1:8080)")
    state_dir: str = key("/var/lib/whisperd/api", _abs_path, "must be an absolute path")
    upload_subdir: str = key(
        "uploads",
        lambda v: bool(v) and not os.path.isabs(v) and ".." not in v.split("/"),
        "must be a relative path inside storage.media_root",
    )
    result_queue: str = key("", lambda v: v == "" or _queue_name(v), "must be a queue name, or empty")
    token: str = key("")  # checked by the API itself, so that a bad value is never echoed
    token_file: str = key("", _abs_or_empty, "must be an absolute path, or empty")
    allowed_origins: list = key(
        [],
        lambda v: all(isinstance(x, str) and re.fullmatch(r"https?://[^/\s]+", x) for x in v),
        "must be a list of origins such as https://intranet.example (scheme://host[:port], no path)",
    )
    upload_retention_s: float = key(0.0, _non_negative, "must be >= 0 seconds (0 = delete once the result is in)")
    upload_idle_timeout_s: float = key(60.0, _positive, "must be > 0 seconds")
    max_concurrent_uploads: int = key(4, _positive, "must be >= 1")


@dataclass
class LoggingConfig:
    level: str = key("INFO", _log_level, "must be DEBUG, INFO, WARNING or ERROR")


@dataclass
class Config:
    broker: BrokerConfig = field(default_factory=BrokerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    workers: WorkersConfig = field(default_factory=WorkersConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    transcribe: TranscribeConfig = field(default_factory=TranscribeConfig)
    events: EventsConfig = field(default_factory=EventsConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    path: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("path")
        return data


def _type_ok(value: Any, kind: type) -> bool:
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "a list"}


def _build_section(name: str, cls: type, raw: Any) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{name}: must be a table ([{name}])")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for unknown in sorted(set(raw) - set(fields)):
        raise ConfigError(f"{name}.{unknown}: unknown key (known: {', '.join(fields)})")
    values = {fname: checked_value(cls, fname, raw[fname], f"{name}.") for fname in fields if fname in raw}
    return cls(**values)


def checked_value(cls: type, fname: str, value: Any, prefix: str = "") -> Any:
    """``value`` for key ``fname`` of section ``cls`` after its type and range checks (floats as
    float), or ConfigError "<prefix><fname>: <why> (got ...)". Jobs reuse it for their options."""
    f = next(f for f in dataclasses.fields(cls) if f.name == fname)
    kind = {"str": str, "int": int, "float": float, "bool": bool, "list": list}[f.type]
    shown = _shown(value)
    if not _type_ok(value, kind):
        raise ConfigError(f"{prefix}{fname}: must be {_TYPE_NAMES[kind]} (got {shown})")
    check = f.metadata.get("check")
    if check is not None and not _passes(check, value):
        raise ConfigError(f"{prefix}{fname}: {f.metadata['why']} (got {shown})")
    if kind is not float:
        return value
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):  # TOML has inf and nan; an integer of 400 digits overflows float()
        raise ConfigError(f"{prefix}{fname}: must be a finite number (got {shown})")
    return number


def _shown(value: Any) -> str:
    """The value as an error quotes it: passwords of URLs hidden before quoting (a password may
    hold a quote or a space, which no pattern over the quoted text can tell from its end), and cut
    to 80 characters (a job's value may be huge)."""
    from whisperd.logs import hide_password

    if isinstance(value, str):
        value = hide_password(value)
    elif isinstance(value, list):
        value = [hide_password(v) if isinstance(v, str) else v for v in value]
    shown = repr(value)
    return shown if len(shown) <= 80 else shown[:77] + "..."


def _passes(check: Callable[[Any], bool], value: Any) -> bool:
    """Whether ``value`` passes ``check``; a check that cannot even look at the value fails it, so
    that no value in a file can crash a reload."""
    try:
        return bool(check(value))
    except Exception:
        return False


def parse(raw: dict[str, Any], path: str | None = None) -> Config:
    """Build a Config from a parsed TOML document, or raise ConfigError naming the bad key."""
    sections = {f.name: f for f in dataclasses.fields(Config) if f.name != "path"}
    for unknown in sorted(set(raw) - set(sections)):
        raise ConfigError(f"{unknown}: unknown section (known: {', '.join(sections)})")
    built = {name: _build_section(name, f.default_factory, raw.get(name, {})) for name, f in sections.items()}
    config = Config(**built, path=path)
    w = config.workers
    if w.hard_rss_mb > 0 and w.max_rss_mb and w.hard_rss_mb < w.max_rss_mb:
        raise ConfigError(f"workers.hard_rss_mb: must be >= workers.max_rss_mb (got {w.hard_rss_mb})")
    return config


def resolve_path(explicit: str | None) -> Path:
    """--config, else $WHISPERD_CONFIG, else /etc/whisperd/whisperd.toml."""
    if explicit:
        return Path(explicit)
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR])
    return DEFAULT_PATH


MAX_CONFIG_BYTES = 1 << 20  # a config is a few KiB; a reload must not read /dev/zero or a huge file to its end


def load(explicit: str | None = None) -> Config:
    """Read, parse and check the config file; every way it can be unusable is a ConfigError with
    one line, so a reload (SIGHUP) refuses it and keeps the running configuration."""
    path = resolve_path(explicit)
    text = _decode(path, _read(path))
    if not text.strip():
        raise ConfigError(f"{path}: the file is empty (a truncated write?); a file of comments only gives the defaults")
    try:
        raw = tomllib.loads(text)
    except RecursionError:
        raise ConfigError(f"{path}: not valid TOML: nested too deeply") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    except ValueError:  # Python's cap on int() of a string
        raise ConfigError(f"{path}: not valid TOML: an integer of more than 4300 digits") from None
    try:
        return parse(raw, str(path))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    except Exception as e:  # a bug in a check must not take the daemon down; no value is quoted
        raise ConfigError(f"{path}: cannot be used ({type(e).__name__})") from None


def _read(path: Path) -> bytes:
    """The file's bytes, only from a regular file: opened without blocking (a FIFO would hang the
    supervisor) and read up to MAX_CONFIG_BYTES."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except PermissionError:
        raise ConfigError(f"{path}: permission denied reading the config file") from None
    except (OSError, ValueError) as e:  # ELOOP (a symlink loop), ENAMETOOLONG, a NUL byte...
        raise ConfigError(f"{path}: cannot open the config file: {getattr(e, 'strerror', None) or e}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = "a directory" if stat.S_ISDIR(mode) else "a FIFO, a device or a socket"
            raise ConfigError(f"{path}: is {kind}, not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config file: {e.strerror or e}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES // 2**20} MiB, not a config file")
    return data


def _decode(path: Path, data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ConfigError(
            f"{path}: not UTF-8 (byte 0x{data[e.start]:02x} on line {line}); TOML files are UTF-8: save it as UTF-8"
        ) from None


def job_deadline_s(cfg: Config, duration_s: float) -> float:
    """How long a job may take before its worker is considered stuck (``limits.job_timeout_s``)."""
    if cfg.limits.job_timeout_s:
        return cfg.limits.job_timeout_s
    return 300.0 + 10.0 * duration_s
