"""A broken config file on reload (SIGHUP) and in ``whisperd check-config``.

Every variant goes through one real daemon: the file is broken, SIGHUP, and the supervisor must
refuse the reload with one log line, keep its worker (same pid) and still do a job; then the good
file is put back for the next variant. The same variants through the real ``check-config`` give
one line of error and exit 1, never a traceback.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, BrokerClient, Daemon, submit

from devkit.clips import JFK
from devkit.daemon import write_toml

Config = dict[str, dict[str, Any]]


@dataclass(frozen=True)
class Broken:
    """One way to break the config file at a path (given the good config's sections)."""

    name: str
    make: Callable[[Path, Config], None]
    checked: bool = True  # check-config refuses it too (a missing model is only refused on reload)


def with_value(section: str, key: str, raw: str) -> Callable[[Path, Config], None]:
    """The good config with ``key = <raw TOML text>`` in ``section``."""

    def make(path: Path, config: Config) -> None:
        sections = {name: {k: v for k, v in values.items() if (name, k) != (section, key)}
                    for name, values in config.items()}  # fmt: skip
        sections.setdefault(section, {})
        write_toml(path, sections)
        text = path.read_text().replace(f"[{section}]\n", f"[{section}]\n{key} = {raw}\n", 1)
        path.write_text(text)

    return make


def with_bytes(data: bytes, keep_good: bool = False) -> Callable[[Path, Config], None]:
    def make(path: Path, config: Config) -> None:
        write_toml(path, config)
        path.write_bytes((path.read_bytes() if keep_good else b"") + data)

    return make


def replaced_by(kind: str) -> Callable[[Path, Config], None]:
    def make(path: Path, config: Config) -> None:
        path.unlink(missing_ok=True)
        if kind == "directory":
            path.mkdir()
        elif kind == "fifo":
            os.mkfifo(path)
        elif kind == "symlink loop":
            path.symlink_to(path.name)
        elif kind == "/dev/zero":
            path.symlink_to("/dev/zero")

    return make


NESTED = "[" * 2000 + "]" * 2000
VARIANTS = [
    Broken("latin1_byte_in_a_comment", with_bytes(b"# caf\xe9 (Latin-1)\n", keep_good=True)),
    Broken("unparsable_broker_url", with_value("broker", "url", '"amqp://guest:guest@[::1/%2F"')),
    Broken("unparsable_entry_of_broker_urls", with_value("broker", "urls", '["amqp://[::1"]')),
    Broken("unparsable_mirror_url", with_value("model", "mirror", '"http://[::1"')),
    Broken("non_ascii_digit_as_port", with_value("metrics", "listen", '"127.0.0.1:\u00b2"')),
    Broken("integer_too_large_for_a_float_key", with_value("limits", "max_file_mb", "1" + "0" * 400)),
    Broken("integer_of_5000_digits", with_value("workers", "count", "9" * 5000)),
    Broken("infinite_timeout", with_value("workers", "drain_timeout", "inf")),
    Broken("nested_too_deeply", with_value("transcribe", "formats", NESTED)),
    Broken("wrong_type_at_top_level", with_bytes(b"broker = 5\n")),
    Broken("empty_file", with_bytes(b"")),
    Broken("nul_bytes", with_bytes(b"\0" * 4096)),
    Broken("two_mib_of_comments", with_bytes(b"#" * 2**21 + b"\n", keep_good=True)),
    Broken("path_is_a_directory", replaced_by("directory")),
    Broken("path_is_a_fifo", replaced_by("fifo")),
    Broken("path_is_a_symlink_loop", replaced_by("symlink loop")),
    Broken("path_is_a_symlink_to_dev_zero", replaced_by("/dev/zero")),
    # valid, but the model check of the reload raised OSError (ENAMETOOLONG) from Path.is_file
    Broken("model_name_of_300_characters", with_value("model", "name", '"' + "m" * 300 + '"'), checked=False),
]


def restore(daemon: Daemon) -> None:
    """Put the good config file back, whatever the variant left at its path."""
    path = daemon.config_path
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None and stat.S_ISDIR(mode):
        path.rmdir()
    elif mode is not None:
        path.unlink()  # never write through a symlink (to /dev/zero) or into a FIFO
    daemon.configure()


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One daemon for every variant: a broken reload must leave it as it was."""
    client = BrokerClient(f"test-{uuid.uuid4().hex[:10]}")
    daemon = Daemon(tmp_path_factory.mktemp("reload"), client).start()
    yield daemon, client
    daemon.stop()
    client.close()


def refused_reload(daemon: Daemon, broken: Callable[[Path, Config], None]) -> str:
    """Break the file, SIGHUP, wait for the refusal; the good file is back afterwards. Returns the
    log written meanwhile."""
    start = len(daemon.log())
    ready = daemon.notify.count("READY=1")
    broken(daemon.config_path, daemon.config)
    try:
        daemon.signal(signal.SIGHUP)
        daemon.wait_ready(ready + 1, timeout=30)  # READY=1 again: the reload is over
    finally:
        restore(daemon)
    return daemon.log()[start:]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.name)
def test_a_reload_of_a_broken_config_keeps_the_daemon_and_its_worker(running, variant):
    daemon, client = running
    workers = sorted(w.pid for w in daemon.workers())
    assert len(workers) == 1
    log = refused_reload(daemon, variant.make)
    failed = [line for line in log.splitlines() if "reload failed" in line]
    assert len(failed) == 1, log
    assert "keeping the running configuration" in failed[0] and "Traceback" not in log
    assert daemon.proc is not None and daemon.proc.poll() is None
    assert sorted(w.pid for w in daemon.workers()) == workers
    submit(client, daemon, JFK.path, f"after-{variant.name}")
    [c] = client.completions(1, 60)
    assert (c["task_id"], c["status"]) == (f"after-{variant.name}", "done")


def check_config(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "whisperd", "check-config", "--config", str(path)],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )  # fmt: skip


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v.checked], ids=lambda v: v.name)
def test_check_config_refuses_a_broken_config_in_one_line(tmp_path, variant):
    path = tmp_path / "whisperd.toml"
    variant.make(path, {"workers": {"count": 1}, "storage": {"media_root": str(tmp_path)}})
    run = check_config(path)
    assert run.returncode == 1, run.stdout
    assert run.stdout == "" and "Traceback" not in run.stderr
    [line] = run.stderr.splitlines()
    assert line.startswith(f"whisperd: config error: {path}: ")
    assert "guest:guest" not in line


@pytest.mark.parametrize("secret", ["Zq9pa'ss", "Zq9pa ss", 'Zq9p"a s@s', "Zq9p:a%40", "Zq9pässwörd", "Zq9p/a#s"])
def test_a_refused_reload_never_logs_a_password(running, secret):
    daemon, _ = running
    url = f"amqp://whisper:{secret}@[::1/%2F"  # unparsable (or its port, after a "/" or "#"): the refusal quotes it
    log = refused_reload(daemon, with_value("broker", "url", json.dumps(url)))
    assert "reload failed" in log and "whisper:***@" in log
    assert "Zq9" not in log
