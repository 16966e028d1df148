"""Configuration: one TOML file, read with tomllib, checked strictly before anything starts.

Every key has a default, so a file of comments only is a valid configuration (an empty one is
refused: more likely a truncated write than a wish for every default). A typo or a wrong type
stops the start with one line that names the key, instead of being silently ignored; a file that
cannot be read or parsed at all is a ConfigError too, so a reload keeps the running configuration.

The keys themselves (their defaults, checks and meanings) are in whisperd.settings; the names
other modules use are re-exported here, so they import them from whisperd.config as before.
"""

from __future__ import annotations

import dataclasses
import math
import os
import stat
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from whisperd.settings import (
    COMPUTE_TYPES,
    ENGINES,
    ApiConfig,
    BrokerConfig,
    Config,
    ControlConfig,
    DiarizeConfig,
    EventsConfig,
    LimitsConfig,
    LoggingConfig,
    MetricsConfig,
    ModelConfig,
    StorageConfig,
    TranscribeConfig,
    WorkersConfig,
    key,
    listen_ok,
    split_listen,
)

__all__ = [
    "ApiConfig",
    "BrokerConfig",
    "COMPUTE_TYPES",
    "Config",
    "ConfigError",
    "ControlConfig",
    "DEFAULT_PATH",
    "DiarizeConfig",
    "ENGINES",
    "ENV_VAR",
    "EventsConfig",
    "LimitsConfig",
    "LoggingConfig",
    "MAX_CONFIG_BYTES",
    "MetricsConfig",
    "ModelConfig",
    "StorageConfig",
    "TranscribeConfig",
    "WorkersConfig",
    "check_job_option",
    "checked_value",
    "diarize_cache_dir",
    "job_deadline_s",
    "key",
    "listen_ok",
    "load",
    "parse",
    "resolve_path",
    "split_listen",
]

DEFAULT_PATH = Path("/etc/whisperd/whisperd.toml")
ENV_VAR = "WHISPERD_CONFIG"


class ConfigError(ValueError):
    """A configuration problem; str() is the one-line message shown to the operator.

    Messages quote the bad value, so passwords in URLs are hidden here, once for every caller.
    """

    def __init__(self, message: str) -> None:
        from whisperd.logs import redact

        super().__init__(redact(message))


def _type_ok(value: Any, kind: type | tuple[type, ...]) -> bool:
    if isinstance(kind, tuple):
        return any(_type_ok(value, k) for k in kind)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


_TYPE_NAMES: dict[Any, str] = {
    str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "a list",
    (int, str): 'an integer or "auto"', (bool, str): 'true, false or "auto"',
}  # fmt: skip
_KINDS: dict[str, Any] = {
    "str": str, "int": int, "float": float, "bool": bool, "list": list, "int | str": (int, str),
    "bool | str": (bool, str),
}  # fmt: skip


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
    kind = _KINDS[f.type]
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


def check_job_option(name: str, value: Any) -> Any:
    """A job's guard option (``contract.GUARD_OPTIONS``) checked as its [transcribe] key is: the
    ``check_option`` that ``contract.parse_job`` takes (the contract does not import the config)."""
    return checked_value(TranscribeConfig, name, value)


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


def diarize_cache_dir(cfg: Config) -> str:
    """``diarize.cache_dir``, else ``$CACHE_DIRECTORY/diarize`` (systemd's CacheDirectory=whisperd), else
    ``$XDG_CACHE_HOME/whisperd/diarize`` (``~/.cache`` when unset): the default its doc describes, in one place."""
    if cfg.diarize.cache_dir:
        return cfg.diarize.cache_dir
    cache = os.environ.get("CACHE_DIRECTORY", "").split(":")[0]
    if cache:
        return os.path.join(cache, "diarize")
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = xdg if os.path.isabs(xdg) else os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "whisperd", "diarize")


def job_deadline_s(cfg: Config, duration_s: float) -> float:
    """How long a job may take before its worker is considered stuck (``limits.job_timeout_s``)."""
    if cfg.limits.job_timeout_s:
        return cfg.limits.job_timeout_s
    return 300.0 + 10.0 * duration_s
