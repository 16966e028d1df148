"""Config loading and validation (unit tests of whisperd.config, plus the check-config command)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from whisperd import config
from whisperd.config import ConfigError

REPO_ETC = config.Path(__file__).resolve().parents[2] / "etc" / "whisperd.toml"


def test_shipped_config_is_valid_and_lists_every_key():
    cfg = config.load(str(REPO_ETC))
    text = REPO_ETC.read_text()
    for section, values in cfg.to_dict().items():
        assert f"[{section}]" in text
        for key in values:
            assert f"\n{key} = " in text, f"{section}.{key} is not documented in etc/whisperd.toml"


def test_empty_file_gives_the_documented_defaults():
    cfg = config.parse({})
    assert cfg.broker.url == "amqp://guest:guest@localhost:5672/%2F"
    assert (cfg.broker.job_queue, cfg.broker.result_queue, cfg.broker.prefetch, cfg.broker.heartbeat) == (
        "whisperd.jobs", "whisperd.results", 1, 60,
    )  # fmt: skip
    assert (cfg.model.download_root, cfg.model.device) == ("/var/lib/whisperd/models", "auto")
    assert (cfg.workers.count, cfg.workers.threads, cfg.transcribe.short_window) == ("auto", 0, "auto")
    assert (cfg.limits.max_job_bytes, cfg.workers.hard_rss_mb, cfg.broker.reply_to_prefixes) == (65536, -1, [])


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"broker": {"prefetch": 0}}, "broker.prefetch: must be >= 1"),
        ({"broker": {"url": "http://x"}}, "broker.url: must be an amqp://"),
        ({"broker": {"urls": ["amqp://a", "http://b"]}}, "broker.urls: must be a list of amqp://"),
        ({"broker": {"urls": "amqp://a"}}, "broker.urls: must be a list"),
        ({"broker": {"url": "amqp://guest:guest@[::1/%2F"}}, "broker.url: must be an amqp://"),
        ({"broker": {"url": "amqp://whisper:pa/ss@rabbit:5672/"}}, "broker.url: must be an amqp://"),
        ({"broker": {"url": "amqp://rabbit:99999/"}}, "broker.url: must be an amqp://"),
        ({"model": {"mirror": "http://[::1"}}, "model.mirror: must be an http://"),
        ({"metrics": {"listen": "127.0.0.1:\u00b2"}}, "metrics.listen: must be host:port"),
        ({"model": {"device": "cuda:\u00b2"}}, "model.device: must be auto, cpu, cuda or cuda:N"),
        ({"storage": {"media_root": "/srv/\0media"}}, "storage.media_root: must be an absolute path"),
        ({"limits": {"max_file_mb": 10**400}}, "limits.max_file_mb: must be a finite number"),
        ({"workers": {"drain_timeout": float("inf")}}, "workers.drain_timeout: must be a finite number"),
        ({"broker": {"heartbeat": "60"}}, "broker.heartbeat: must be an integer"),
        ({"workers": {"count": True}}, 'workers.count: must be an integer or "auto" (got True)'),
        ({"workers": {"count": 2.0}}, 'workers.count: must be an integer or "auto" (got 2.0)'),
        ({"workers": {"count": 0}}, 'workers.count: must be "auto" or between 1 and 256'),
        ({"workers": {"count": "Auto"}}, 'workers.count: must be "auto" or between 1 and 256'),
        ({"transcribe": {"short_window": "yes"}}, 'transcribe.short_window: must be true, false or "auto"'),
        ({"workers": {"cuont": 2}}, "workers.cuont: unknown key"),
        ({"wokers": {}}, "wokers: unknown section"),
        ({"model": {"device": "gpu"}}, "model.device: must be auto, cpu, cuda or cuda:N"),
        ({"model": {"engine": "whisperx"}}, "model.engine: must be one of ['openai-whisper', 'faster-whisper']"),
        ({"model": {"compute_type": "int4"}}, "model.compute_type: must be one of ['auto', 'int8',"),
        ({"storage": {"media_root": "relative"}}, "storage.media_root: must be an absolute path"),
        ({"model": {"download_root": "models"}}, "model.download_root: must be an absolute path"),
        ({"transcribe": {"formats": ["txt", "docx"]}}, "transcribe.formats:"),
        ({"workers": {"max_rss_mb": 500, "hard_rss_mb": 100}}, "workers.hard_rss_mb: must be >= workers.max_rss_mb"),
        ({"workers": {"hard_rss_mb": -2}}, "workers.hard_rss_mb: must be >= 0 (0 = no limit), or -1"),
        ({"limits": {"max_job_bytes": 100}}, "limits.max_job_bytes: must be between 1024 and 16 MiB"),
        ({"broker": {"reply_to_prefixes": [""]}}, "broker.reply_to_prefixes: must be a list of non-empty"),
        ({"broker": {"reply_to_prefixes": "amq.gen-"}}, "broker.reply_to_prefixes: must be a list"),
    ],
)
def test_bad_values_name_the_key(raw, message):
    with pytest.raises(ConfigError) as e:
        config.parse(raw)
    assert str(e.value).startswith(message)
    assert "\n" not in str(e.value)


def test_path_resolution_order(monkeypatch, tmp_path):
    monkeypatch.delenv(config.ENV_VAR, raising=False)
    assert config.resolve_path(None) == config.DEFAULT_PATH
    monkeypatch.setenv(config.ENV_VAR, str(tmp_path / "env.toml"))
    assert config.resolve_path(None) == tmp_path / "env.toml"
    assert config.resolve_path("/x.toml") == config.Path("/x.toml")


def test_check_config_command(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[workers]\ncount = 'two'\n")
    run = subprocess.run(
        [sys.executable, "-m", "whisperd", "check-config", "--config", str(bad)], capture_output=True, text=True
    )
    assert run.returncode == 1
    assert run.stderr.strip() == (
        f"whisperd: config error: {bad}: workers.count: must be \"auto\" or between 1 and 256 (got 'two')"
    )
    secret = tmp_path / "secret.toml"
    secret.write_text('[broker]\nurl = "amqp//whisper:S3cr3t-pw@rabbit:5672/"\n')  # malformed: no "://"
    run = subprocess.run(
        [sys.executable, "-m", "whisperd", "check-config", "--config", str(secret)], capture_output=True, text=True
    )
    assert run.returncode == 1 and "S3cr3t-pw" not in run.stderr + run.stdout
    assert "broker.url: must be an amqp:// or amqps:// URL (got 'amqp//whisper:***@rabbit:5672/')" in run.stderr
    good = subprocess.run(
        [sys.executable, "-m", "whisperd", "check-config", "--config", str(REPO_ETC)], capture_output=True
    )
    assert good.returncode == 0
    broken = tmp_path / "broken.toml"
    broken.write_text("[workers\n")
    run = subprocess.run(
        [sys.executable, "-m", "whisperd", "run", "--config", str(broken)], capture_output=True, text=True
    )
    assert run.returncode == 2 and "not valid TOML" in run.stderr


def test_cluster_urls_start_at_random_and_keep_every_node():
    from whisperd import broker

    cfg = config.parse({"broker": {"url": "amqp://a", "urls": ["amqp://b", "amqp://c", "amqp://a"]}}).broker
    orders = {tuple(broker.cluster_urls(cfg)) for _ in range(200)}
    assert all(sorted(o) == ["amqp://a", "amqp://b", "amqp://c"] for o in orders)
    assert {o[0] for o in orders} == {"amqp://a", "amqp://b", "amqp://c"}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"vad": "yes"}, "transcribe.vad: must be true or false"),
        ({"vad_threshold": 1.0}, "transcribe.vad_threshold: must be between 0.01 and 0.99"),
        ({"vad_min_silence_ms": -1}, "transcribe.vad_min_silence_ms: must be between 0 and 60000 ms"),
        ({"vad_speech_pad_ms": 2.5}, "transcribe.vad_speech_pad_ms: must be an integer"),
        ({"no_speech_threshold": float("nan")}, "transcribe.no_speech_threshold: must be between 0 and 1"),
        ({"compression_ratio_threshold": float("inf")}, "transcribe.compression_ratio_threshold: must be between"),
        ({"hallucination_silence_threshold": 31}, "transcribe.hallucination_silence_threshold: must be between"),
    ],
)
def test_bad_speech_gate_and_guard_values_name_the_key(raw, message):
    with pytest.raises(ConfigError) as e:
        config.parse({"transcribe": raw})
    assert str(e.value).startswith(message)


@pytest.mark.parametrize(
    "text, shown",
    [
        ("amqp://bob:s3cr%40t@host:5672/%2F", "amqp://bob:***@host:5672/%2F"),
        ("amqps://u:p@ss/w@[::1]:5671/vh", "amqps://u:***@[::1]:5671/vh"),
        ("cannot connect to bob:hunter2@rabbit1:5672", "cannot connect to bob:***@rabbit1:5672"),
        ("amqp://rabbit1:5672/%2F and 10:30 are not secrets", "amqp://rabbit1:5672/%2F and 10:30 are not secrets"),
        ('(got "amqp://u:pa\'ss@h:5672/")', '(got "amqp://u:***@h:5672/")'),
        ("lost amqp://u:pa ss w@h:5672/ at 10:30", "lost amqp://u:***@h:5672/ at 10:30"),
        ("['amqp://u:p@h', 'amqps://v:q w@k']", "['amqp://u:***@h', 'amqps://v:***@k']"),
        ("broker=amqp://u:a://b@h/", "broker=amqp://u:***@h/"),
        ("url:amqp://v:c d@k", "url:amqp://v:***@k"),
        ("amqp://u:p@h, then url:amqp://v:c d@k", "amqp://u:***@k"),  # over-hiding, never showing
        ("got 'amqp//whisper:S3cr3t-pw@rabbit:5672/'", "got 'amqp//whisper:***@rabbit:5672/'"),
    ],
)
def test_passwords_are_redacted_in_messages(text, shown):
    from whisperd.logs import redact

    assert redact(text) == shown


def test_redaction_is_linear_in_a_long_line():
    """Every log line goes through redact: a 100 000-character word must not cost seconds (the
    former patterns backtracked over the whole word from each of its characters)."""
    import time

    from whisperd.logs import redact

    for line in ("a" * 100_000, "amqp://" + "u" * 100_000, " amqp://u:p" * 10_000):
        started = time.monotonic()
        redact(line)
        assert time.monotonic() - started < 1.0


# Passwords an operator may put in a URL, unencoded; each carries "Zq9" to look for in the output.
SECRETS = ["Zq9pa'ss", "Zq9pa ss", 'Zq9pa"ss', "Zq9p@ss@word", "Zq9p/ss/word", "Zq9p#ss", "Zq9p%40ss",
           "Zq9pässwörd€", "Zq9pa:ss:word", "Zq9p'a\"s s", "Zq9p\\ss", "Zq9pa\tss", "Zq9pa://ss", "Zq9p,a]s'",
           "Zq9" + "x" * 300]  # fmt: skip
NASTY = "Zq9pa'ss w@rd"
SECRET_CONFIGS = [
    *((f"broker.url[{s[3:13]!r}]", {"broker": {"url": f"amqpx://whisper:{s}@rabbit:5672/"}}) for s in SECRETS),
    ("broker.url unparsable", {"broker": {"url": f"amqp://whisper:{NASTY}@[::1/%2F"}}),
    ("broker.urls entry", {"broker": {"urls": ["amqp://a", f"amqpx://whisper:{NASTY}@b:5672/"]}}),
    ("model.mirror", {"model": {"mirror": f"ftp://mirror:{NASTY}@mirror.lan/whisper"}}),
    ("api.allowed_origins", {"api": {"allowed_origins": [f"https://web:{NASTY}@intranet.example/path"]}}),
    ("metrics.listen", {"metrics": {"listen": f"http://metrics:{NASTY}@host:9464"}}),
    ("unknown key named by a URL", f'[broker]\n"amqp://whisper:{NASTY}@rabbit" = 1\n'),
]


@pytest.mark.parametrize("sections", [c[1] for c in SECRET_CONFIGS], ids=[c[0] for c in SECRET_CONFIGS])
def test_check_config_never_prints_a_password(tmp_path, sections):
    from devkit.daemon import write_toml

    path = tmp_path / "whisperd.toml"
    if isinstance(sections, str):
        path.write_text(sections)  # TOML text of its own
    else:
        write_toml(path, sections)
    run = subprocess.run(
        [sys.executable, "-m", "whisperd", "check-config", "--config", str(path)], capture_output=True, text=True
    )
    assert run.returncode == 1, run.stdout
    assert "Zq9" not in run.stdout + run.stderr, run.stderr
    assert ":***@" in run.stderr and len(run.stderr.splitlines()) == 1


def test_check_config_hides_a_password_equal_to_the_user_name(tmp_path):
    path = tmp_path / "whisperd.toml"
    path.write_text('[broker]\nurl = "amqpx://Zq9same:Zq9same@rabbit:5672/"\n')
    run = subprocess.run(
        [sys.executable, "-m", "whisperd", "check-config", "--config", str(path)], capture_output=True, text=True
    )
    assert run.returncode == 1 and "(got 'amqpx://Zq9same:***@rabbit:5672/')" in run.stderr
    assert run.stderr.count("Zq9same") == 1


# The configuration reference (docs/configuration.md), generated from the keys' docs.
REPO_DOCS = REPO_ETC.parent.parent / "docs" / "configuration.md"


def _reference_keys(text: str) -> dict[str, set[str]]:
    """{section: keys} of a rendered reference: its "## [section]" headings and its table rows."""
    found: dict[str, set[str]] = {}
    section = None
    for line in text.splitlines():
        if line.startswith("## [") and line.endswith("]"):
            section = line[4:-1]
            found[section] = set()
        elif section and line.startswith("| `"):
            found[section].add(line[3 : line.index("`", 3)])
    return found


def test_every_section_and_key_has_a_doc():
    from whisperd.config_reference import sections

    for name, cls in sections():
        doc = (cls.__doc__ or "").strip()
        assert doc and not doc.startswith(cls.__name__ + "("), f"[{name}] has no docstring"  # not dataclass's
        for f in config.dataclasses.fields(cls):
            assert isinstance(f.metadata.get("doc"), str) and f.metadata["doc"].strip(), f"{name}.{f.name}: no doc"
            assert "\n" not in f.metadata["doc"] and "|" not in f.metadata["doc"], f"{name}.{f.name}"


def test_reference_in_docs_is_up_to_date():
    from whisperd.config_reference import render

    assert REPO_DOCS.read_text(encoding="utf-8") == render(), (
        "docs/configuration.md is stale: run `python -m whisperd.config_reference > docs/configuration.md`"
    )


def test_reference_lists_the_shipped_keys_and_only_known_sections():
    from whisperd.config_reference import render

    reference = _reference_keys(render())
    sections = [f for f in config.dataclasses.fields(config.Config) if f.name != "path"]  # as parse() has them
    known = {f.name: {k.name for k in config.dataclasses.fields(f.default_factory)} for f in sections}
    assert list(reference) == list(known)  # the order of the Config dataclass
    assert reference == known
    shipped = config.tomllib.loads(REPO_ETC.read_text(encoding="utf-8"))
    for section, values in shipped.items():
        assert section in reference, f"[{section}] of etc/whisperd.toml is not in the reference"
        for key in values:
            assert key in reference[section], f"{section}.{key} of etc/whisperd.toml is not in the reference"


def test_reference_cells_are_escaped_and_defaults_are_toml():
    from whisperd.config_reference import cell, default_of, sections, toml_value

    assert cell("a | b") == "a \\| b"
    assert [toml_value(v) for v in ("", "x\"y", True, False, 3, 2.5, ["json", "txt"], [])] == [
        '""', '"x\\"y"', "true", "false", "3", "2.5", '["json", "txt"]', "[]",
    ]  # fmt: skip
    for name, cls in sections():  # each default, written as TOML, parses back to itself
        for f in config.dataclasses.fields(cls):
            text = f"v = {toml_value(default_of(f))}"
            assert config.tomllib.loads(text)["v"] == default_of(f), f"{name}.{f.name}"


def test_reference_check_flags_a_stale_file(tmp_path, capsys):
    from whisperd.config_reference import main, render

    path = tmp_path / "configuration.md"
    path.write_text(render(), encoding="utf-8")
    assert main(["--check", str(path)]) == 0
    path.write_text(render() + "edited by hand\n", encoding="utf-8")
    assert main(["--check", str(path)]) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "python -m whisperd.config_reference > docs/configuration.md" in err
    assert main(["--check", str(tmp_path / "missing.md")]) == 1


# [diarize]: speaker diarization.
CACHE_DIR_WHY = "diarize.cache_dir: must be an absolute path, or empty for the default"


def test_diarize_defaults_and_bounds():
    d = config.parse({}).diarize
    assert (d.default, d.max_speakers, d.preload, d.cache_dir) == (False, 10, False, "")
    d = config.parse({"diarize": {"default": True, "max_speakers": 50, "preload": True, "cache_dir": "/srv/c"}}).diarize
    assert (d.default, d.max_speakers, d.preload, d.cache_dir) == (True, 50, True, "/srv/c")
    assert config.parse({"diarize": {"max_speakers": 1}}).diarize.max_speakers == 1


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"max_speakers": 0}, "diarize.max_speakers: must be between 1 and 50 (got 0)"),
        ({"max_speakers": 51}, "diarize.max_speakers: must be between 1 and 50 (got 51)"),
        ({"max_speakers": 2.0}, "diarize.max_speakers: must be an integer (got 2.0)"),
        ({"max_speakers": True}, "diarize.max_speakers: must be an integer (got True)"),
        ({"default": "yes"}, "diarize.default: must be true or false (got 'yes')"),
        ({"preload": 1}, "diarize.preload: must be true or false (got 1)"),
        ({"cache_dir": "cache/diarize"}, f"{CACHE_DIR_WHY} (got 'cache/diarize')"),
        ({"cache_dir": "/var/\0cache"}, f"{CACHE_DIR_WHY} (got '/var/\\x00cache')"),
        ({"speakers": 2}, "diarize.speakers: unknown key (known: default, max_speakers, preload, cache_dir)"),
    ],
)
def test_bad_diarize_values_name_the_key(raw, message):
    with pytest.raises(ConfigError) as e:
        config.parse({"diarize": raw})
    assert str(e.value) == message


def test_the_diarize_cache_dir_default(monkeypatch):
    cfg = config.parse({})
    monkeypatch.setenv("CACHE_DIRECTORY", "/var/cache/whisperd")
    monkeypatch.setenv("XDG_CACHE_HOME", "/home/w/.xdg")
    assert config.diarize_cache_dir(cfg) == "/var/cache/whisperd/diarize", "systemd's CacheDirectory= first"
    monkeypatch.delenv("CACHE_DIRECTORY")
    assert config.diarize_cache_dir(cfg) == "/home/w/.xdg/whisperd/diarize"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative")  # not absolute: ignored, as the XDG spec says
    monkeypatch.setenv("HOME", "/home/w")
    assert config.diarize_cache_dir(cfg) == "/home/w/.cache/whisperd/diarize"
    monkeypatch.setenv("CACHE_DIRECTORY", "/var/cache/whisperd")
    assert config.diarize_cache_dir(config.parse({"diarize": {"cache_dir": "/srv/c"}})) == "/srv/c"


def test_the_pipeline_bounds_speaker_counts_by_diarize_max_speakers(tmp_path):
    from whisperd.contract import ErrorCode, job_body

    from .fakes import FakeTranscriber
    from .test_pipeline import make_pipeline

    body = job_body("sp-1", "nowhere.flac", diarize=True, speakers=12)
    transcriber = FakeTranscriber()
    outcome = make_pipeline(tmp_path, transcriber).run(body)
    assert outcome.completion is not None and outcome.ack
    message = "speakers is 12; the limit is 10 (diarize.max_speakers)"
    assert outcome.completion.error == {"code": ErrorCode.INVALID_OPTION, "message": message}
    outcome = make_pipeline(tmp_path, transcriber, diarize={"max_speakers": 12}).run(body)
    assert outcome.completion is not None
    assert outcome.completion.error["code"] == ErrorCode.FILE_NOT_FOUND, "past the options, to the file"
    assert transcriber.calls == []


@pytest.mark.parametrize(
    ("flags", "options", "error"),
    [
        (["--diarize", "--speakers", "3"], {"diarize": True, "speakers": 3, "min_speakers": None,
                                            "max_speakers": None}, None),
        (["--min-speakers", "2", "--max-speakers", "4"], {"diarize": None, "speakers": None, "min_speakers": 2,
                                                          "max_speakers": 4}, None),
        (["--no-diarize"], {"diarize": False, "speakers": None, "min_speakers": None, "max_speakers": None}, None),
        ([], {"diarize": None, "speakers": None, "min_speakers": None, "max_speakers": None}, None),
        (["--diarize", "--speakers", "5"], None, "speakers is 5; the limit is 4 (diarize.max_speakers)"),
        (["--no-diarize", "--max-speakers", "2"],
         None, "max_speakers is set but diarize is false: speaker counts are for diarized jobs"),
        (["--speakers", "2", "--min-speakers", "1"],
         None, "speakers is an exact count: send it or min_speakers/max_speakers, not both"),
        (["--min-speakers", "3", "--max-speakers", "2"], None, "min_speakers (3) is more than max_speakers (2)"),
        (["--speakers", "0"], None, "speakers must be at least 1, got 0"),
    ],
)  # fmt: skip
def test_submit_checks_the_diarization_flags_against_its_config(tmp_path, monkeypatch, capsys, flags, options, error):
    """``whisperd submit`` refuses what the workers (same config file) would, before it copies or queues anything."""
    from whisperd import cli
    from whisperd import submit as submit_mod

    path = tmp_path / "whisperd.toml"
    path.write_text(f'[storage]\nmedia_root = "{tmp_path}/media"\n\n[diarize]\nmax_speakers = 4\n')
    audio = tmp_path / "a.wav"
    audio.write_bytes(b"RIFF")
    calls = []
    monkeypatch.setattr(submit_mod, "submit", lambda cfg, files, *args, **kw: calls.append(kw) or 0)
    code = cli.main(["submit", "--config", str(path), str(audio), *flags])
    if error is None:
        assert (code, calls) == (0, [options])
    else:
        assert (code, calls, capsys.readouterr().err) == (2, [], f"whisperd: {error}\n")
    assert not (tmp_path / "media").exists(), "nothing staged"
