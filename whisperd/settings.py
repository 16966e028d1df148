"""The configuration keys: every section of the file, and each key's default, range check and meaning in one
place, next to its neighbours; docs/configuration.md is generated from it (whisperd.config_reference), and
whisperd.config reads and checks a file against it."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from whisperd.contract import DEFAULT_MAX_SPEAKERS, FORMATS, SPEAKERS_LIMIT

ENGINES = ("openai-whisper", "faster-whisper")
# CTranslate2 compute types (faster-whisper); auto = int8 on a CPU, float16 on a GPU.
COMPUTE_TYPES = ("auto", "int8", "int8_float32", "int8_float16", "int8_bfloat16", "int16", "float16", "bfloat16",
                 "float32")  # fmt: skip


def _positive(v: Any) -> bool:
    return v > 0


def _non_negative(v: Any) -> bool:
    return v >= 0


def _worker_count(v: int | str) -> bool:
    return v == "auto" or (isinstance(v, int) and 1 <= v <= 256)


def _auto_or_bool(v: bool | str) -> bool:
    return isinstance(v, bool) or v == "auto"


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


def key(default: Any, check: Callable[[Any], bool] | None = None, why: str = "", *, doc: str, **kw: Any) -> Any:
    """A config key: its default, a check with the reason shown when it fails, and ``doc``, what it
    means (one to three sentences of Markdown, the key's entry in docs/configuration.md)."""
    meta = {"check": check, "why": why, "doc": doc}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


# fmt: off
@dataclass
class BrokerConfig:
    """The RabbitMQ connection, and the queues that jobs and completions travel on."""

    url: str = key("amqp://guest:guest@localhost:5672/%2F", _amqp_url, "must be an amqp:// or amqps:// URL",
                   doc="AMQP URL of RabbitMQ (`amqps://` for TLS). The vhost `/` is written `%2F`.")
    urls: list = key([], lambda v: all(isinstance(x, str) and _amqp_url(x) for x in v),
                     "must be a list of amqp:// or amqps:// URLs",
                     doc="Other nodes of a RabbitMQ cluster; empty = `url` only. Each connection starts at a random "
                         "one of `url` + `urls` and tries the others in turn, so workers spread over the nodes and "
                         "fail over when one is down.")
    job_queue: str = key("whisperd.jobs", _queue_name, "must be 1-255 bytes and not start with 'amq.'",
                         doc="Durable quorum queue that producers publish jobs to. Its dead-letter queue is "
                             "`<job_queue>.dead`.")
    result_queue: str = key("whisperd.results", _queue_name, "must be 1-255 bytes and not start with 'amq.'",
                            doc="Durable queue that receives one completion message per job.")
    prefetch: int = key(1, _positive, "must be >= 1",
                        doc="Jobs a worker may hold unacknowledged at once. 1 is right for transcription: a job waits "
                            "in the queue, where another worker can take it, rather than behind a long one.")
    heartbeat: int = key(60, _non_negative, "must be >= 0 seconds (0 disables heartbeats)",
                         doc="AMQP heartbeat in seconds; 0 disables it. Heartbeats keep flowing during long "
                             "transcriptions.")
    max_attempts: int = key(3, _positive, "must be >= 1",
                            doc="A job whose worker dies (crash, OOM kill, timeout) is retried; after this many "
                                'attempts it gets a "failed" completion (error.code `attempts_exhausted`) and moves to '
                                "the dead-letter queue.")
    reconnect_max_s: float = key(30.0, _positive, "must be > 0 seconds",
                                 doc="Longest pause between reconnection attempts while the broker is unreachable, in "
                                     "seconds.")
    reply_to_prefixes: list = key(
        [], lambda v: all(isinstance(x, str) and x for x in v),
        "must be a list of non-empty queue-name prefixes (empty = any queue but the job and dead-letter queues)",
        doc="Completions also go to a job's AMQP `reply_to`, best effort; the job and dead-letter queues are never "
            "accepted as `reply_to`. A non-empty list also limits replies to queues whose names start with one of "
            "these prefixes.")


@dataclass
class ModelConfig:
    """The Whisper model that every worker loads: which engine runs it, which weights, where they are
    kept and on which device."""

    engine: str = key("openai-whisper", lambda v: v in ENGINES, f"must be one of {list(ENGINES)}",
                      doc='`"openai-whisper"`: OpenAI\'s PyTorch code on a `.pt` checkpoint. `"faster-whisper"`: the '
                          "same weights in CTranslate2 format, int8 on a CPU (about a third of the memory, faster, "
                          'beam search at little extra cost), batched on a GPU (docs/performance.md, "Choosing an '
                          'engine"). Changing it and reloading replaces the workers one at a time; no job is lost.')
    name: str = key("small", lambda v: bool(v.strip()), "must not be empty",
                    doc="A Whisper model name (`tiny`, `base`, `small`, `medium`, `large-v3`, `turbo`, ... and the "
                        "`.en` variants) or a path: a `.pt` checkpoint (openai-whisper) or a CTranslate2 model "
                        "directory (faster-whisper).")
    download_root: str = key("/var/lib/whisperd/models", _abs_path, "must be an absolute path",
                             doc="Where named models are looked for, and downloaded to: under whisper's file names "
                                 "(`base.pt`, `large-v3.pt`, ...), faster-whisper's as directories "
                                 "(`faster-whisper-base/`, ...). `whisperd model list` shows what is installed; "
                                 "`whisperd model fetch NAME` downloads one ahead of time.")
    device: str = key("auto", _device, "must be auto, cpu, cuda or cuda:N",
                      doc='`"auto"` (cuda when available, else cpu), `"cpu"`, `"cuda"` (workers spread over all '
                          'visible GPUs) or `"cuda:N"` (GPU N only).')
    fp16: bool = key(True,
                     doc="Half precision on GPUs (openai-whisper); ignored on the CPU, which always uses fp32.")
    download: bool = key(True,
                         doc="Download a missing named model when workers start (needs outbound HTTPS). false: a "
                             "missing model stops the start at once, naming the file to copy into `download_root` "
                             "(air-gapped hosts).")
    mirror: str = key("", _http_url_or_empty, "must be an http:// or https:// URL, or empty for OpenAI's",
                      doc="Base URL of a mirror laid out as OpenAI's (`<sha256>/<file>.pt`) that openai-whisper's "
                          "models are downloaded from; empty = OpenAI's own URLs.")
    compute_type: str = key("auto", lambda v: v in COMPUTE_TYPES, f"must be one of {list(COMPUTE_TYPES)}",
                            doc='faster-whisper: CTranslate2\'s compute type. `"auto"` = int8 on a CPU, float16 on a '
                                "GPU.")
    batch_size: int = key(0, lambda v: 0 <= v <= 64, "must be between 0 and 64 (0 = one window at a time)",
                          doc="faster-whisper: decode this many 30-second windows of a file together (its batched "
                              "pipeline, for GPUs, where it multiplies the audio per second of a long file); 0 = one "
                              "window at a time, which is what a CPU wants. Windows are cut where Silero VAD hears a "
                              "160 ms pause, gate on or off (cutting at the gate's 2 s pauses or every 30 s lost "
                              "5-50 % of the words).")


@dataclass
class StorageConfig:
    """Where the audio is read from and the results are written to."""

    media_root: str = key("/var/lib/whisperd/media", _abs_path, "must be an absolute path",
                          doc="Where producers put audio: a job's `audio_path` is relative to it (or absolute inside "
                              "it). whisperd never reads a file outside it, symlinks included.")
    results_dir: str = key("/var/lib/whisperd/results", _abs_path, "must be an absolute path",
                           doc="Where results are written, as `<task_id>.<format>`.")


@dataclass
class WorkersConfig:
    """The worker processes that the supervisor runs: how many, their threads, and when one is recycled,
    killed or given up on."""

    count: int | str = key("auto", _worker_count, 'must be "auto" or between 1 and 256',
                           doc="Worker processes, each with its own model and broker connection; a reload applies a "
                               'change. `"auto"`: one single-threaded worker per core (CPUAffinity=/CPUQuota= '
                               "honoured), as many as half the memory holds (MemoryMax= honoured), one on a GPU; "
                               "`whisperd check-config` shows what it picks. On a CPU, N one-thread workers did 1.5x "
                               "the work of one N-thread worker, but one job alone finishes ~25 % sooner with all the "
                               "threads (docs/performance.md): a host that gets one long recording at a time may "
                               "prefer 1.")
    threads: int = key(0, _non_negative, "must be >= 0 (0 = cores / count)",
                       doc="Inference threads per worker (torch or CTranslate2); 0 = the cores divided by `count` (at "
                           "least 1), so that the workers never oversubscribe the cores.")
    drain_timeout: float = key(600.0, _positive, "must be > 0 seconds",
                               doc="On stop (SIGTERM), how long workers may take to finish the job in hand, in "
                                   "seconds. Keep the unit's TimeoutStopSec= above it.")
    timeout: float = key(60.0, _positive, "must be > 0 seconds",
                         doc="A worker that sends no heartbeat to the supervisor for this many seconds is killed and "
                             "replaced.")
    ready_timeout: float = key(600.0, _positive, "must be > 0 seconds",
                               doc="Seconds a worker has to load its model and become ready; one that is not ready by "
                                   "then is killed, a failed start.")
    boot_attempts: int = key(3, _positive, "must be >= 1",
                             doc="A worker slot that fails to start this many times in a row makes whisperd exit with "
                                 "an error (so that systemd's restart policy takes over) instead of respawning "
                                 "forever.")
    max_jobs: int = key(0, _non_negative, "must be >= 0 (0 = never recycle)",
                        doc="Recycle a worker after this many jobs, plus a random 0..`max_jobs_jitter`; 0 = never.")
    max_jobs_jitter: int = key(0, _non_negative, "must be >= 0",
                               doc="Up to this many jobs, drawn at random for each worker, added to `max_jobs`, so "
                                   "that workers are not all recycled together; unused when `max_jobs` is 0.")
    max_rss_mb: int = key(0, _non_negative, "must be >= 0 (0 = no limit)",
                          doc="Recycle a worker after its current job when its RSS exceeds this many MiB; 0 = no "
                              "limit.")
    hard_rss_mb: int = key(-1, lambda v: v >= -1, "must be >= 0 (0 = no limit), or -1 (derived from model and limits)",
                           doc="Kill a worker at once when its RSS exceeds this many MiB, and retry its job; 0 = no "
                               "limit. -1 derives it: 1624 + 3 x the model file + 0.9 MiB per second of "
                               "`limits.max_duration_s` (the diarizer, the decoded audio, whisper's whole-file mel "
                               "and the diarizer's features), at least `max_rss_mb`: about 16 000 MiB for `small` "
                               "and 4 h.")


@dataclass
class LimitsConfig:
    """Limits on each job: the file's size, the audio's length, its time, and the job message's size."""

    max_file_mb: float = key(2048.0, _positive, "must be > 0",
                             doc="Largest audio file accepted, in MiB; a larger one is refused with error.code "
                                 "`file_too_large`.")
    max_duration_s: float = key(4 * 3600.0, _positive, "must be > 0 seconds",
                                doc="Longest audio accepted, in seconds (4 hours); longer audio is refused with "
                                    "error.code `audio_too_long`.")
    job_timeout_s: float = key(0.0, _non_negative, "must be >= 0 seconds (0 = scaled to audio length)",
                               doc="A job running longer than this many seconds from the moment it is taken (decoding "
                                   "included) is killed and retried; 0 = 300 s + 10 x the audio length, known once the "
                                   "audio is decoded.")
    decode_timeout_s: float = key(0.0, _non_negative, "must be >= 0 seconds (0 = 10 s + max_duration_s / 60)",
                                  doc="Wall-clock limit of decoding one file in the worker's decoder helper, in "
                                      "seconds; 0 = 10 s plus 1 s per minute of `max_duration_s`. Never more than 80 % "
                                      "of the job's time limit before its length is known (240 s with the defaults), "
                                      "so a stuck decoder is killed and the job fails with `invalid_audio` before the "
                                      "supervisor would kill the worker and its loaded model.")
    max_job_bytes: int = key(64 * 1024, lambda v: 1024 <= v <= 16 * 2**20, "must be between 1024 and 16 MiB",
                             doc="Job bodies larger than this many bytes are dead-lettered unread, with the reason in "
                                 "`x-whisperd-reason`.")


def _within(low: float, high: float) -> Callable[[Any], bool]:
    """A closed range; NaN and infinities (TOML and Python's JSON accept both) fall outside it."""
    return lambda v: low <= v <= high


@dataclass
class TranscribeConfig:
    """How audio is transcribed: the defaults of a job's result formats and decoding, the speech gate
    (Silero VAD before Whisper) and Whisper's own hallucination guards."""

    formats: list = key(["json", "txt"], _formats, f"must be a non-empty list of distinct values from {list(FORMATS)}",
                        doc="Result formats written when a job does not say: `json`, `txt`, `srt`, `vtt`, `tsv`.")
    beam_size: int = key(0, _non_negative, "must be >= 0 (0 = greedy, whisper's default)",
                         doc="Beam search width; 0 = greedy decoding with temperature fallback, whisper's default.")
    # The speech gate: whisperd.speech.
    vad: bool = key(True,
                    doc="The speech gate: Silero VAD (faster-whisper's, bundled) finds the speech first and only that "
                        "is transcribed, so silence, noise and music give no invented text and cost almost nothing. "
                        "Timestamps stay those of the original file, the completion's `speech_s` says how much speech "
                        "there was; false = every sample goes to Whisper.")
    vad_threshold: float = key(0.5, _within(0.01, 0.99), "must be between 0.01 and 0.99",
                               doc="Speech probability above which a 32 ms frame counts as speech.")
    vad_min_silence_ms: int = key(2000, _within(0, 60_000), "must be between 0 and 60000 ms",
                                  doc="Silences shorter than this, in ms, stay inside the speech around them.")
    vad_speech_pad_ms: int = key(400, _within(0, 5_000), "must be between 0 and 5000 ms",
                                 doc="Speech kept either side of each stretch of speech, in ms, so that no word loses "
                                     "its edges.")
    # Whisper's hallucination guards: contract.GUARD_OPTIONS, which a job may override (checked_value).
    condition_on_previous_text: bool = key(False,
                                           doc="Prompt each 30 s window with the text so far (whisper's default: "
                                               "true); a job may set it. Off here: measured with base (bench/vad.py), "
                                               "the same accuracy on real speech, and without the gate silence after "
                                               "speech cost 16 s instead of 362 s (whisper retrying one invented "
                                               "phrase).")
    no_speech_threshold: float = key(0.6, _within(0.0, 1.0), "must be between 0 and 1",
                                     doc="A window whose no-speech probability is above this (and whose decoding "
                                         'failed) is skipped; a job may set it (docs/performance.md, "Silence, noise '
                                         'and hallucinations").')
    compression_ratio_threshold: float = key(2.4, _within(1.0, 100.0), "must be between 1 and 100",
                                             doc="A decoding whose text compresses better than this with gzip "
                                                 "(repetition) is retried at a higher temperature; a job may set it.")
    hallucination_silence_threshold: float = key(
        0.0, _within(0.0, 30.0), "must be between 0 and 30 seconds (0 = off; used with word timestamps)",
        doc="With word timestamps only: skip silences longer than this many seconds around a likely hallucination; 0 = "
            "off. A job may set it.")
    # engines.window_s; measured in bench/real_hosts.py.
    short_window: bool | str = key("auto", _auto_or_bool, 'must be true, false or "auto"',
                                   doc="Audio (the speech, with the gate on) of up to 19 s is encoded in a window of "
                                       "max(10 s, its length + 1 s) instead of Whisper's 30 s (docs/performance.md, "
                                       '"Sizing a host"). `"auto"`: on with faster-whisper (2.5x faster on short clips '
                                       "at the same WER), off with openai-whisper (1.6x, but one word more wrong on "
                                       "the English clips); true or false for either engine.")


@dataclass
class DiarizeConfig:
    """Speaker diarization: which speaker said each segment, for the jobs that ask (a job's `diarize`, or
    `default`), and how many speakers a job may ask for."""

    default: bool = key(False,
                        doc="Whether a job that does not say (`diarize` absent or null) is diarized; a job's own "
                            "`diarize` true or false always wins.")
    max_speakers: int = key(DEFAULT_MAX_SPEAKERS, _within(1, SPEAKERS_LIMIT),
                            f"must be between 1 and {SPEAKERS_LIMIT}",
                            doc="The largest `speakers`, `min_speakers` or `max_speakers` a job may ask for; a job "
                                "asking more fails with `invalid_option`.")
    preload: bool = key(False,
                        doc="Load the diarizer when a worker starts, so that the first job that asks for it does not "
                            "wait for it (its memory is then taken in every worker, diarized jobs or not); false = "
                            "on the first job that asks.")
    cache_dir: str = key("", _abs_or_empty, "must be an absolute path, or empty for the default",
                         doc="Where the diarizer's compiled code is cached, so that workers after the first start it "
                             "without compiling it again; safe to delete. Empty = `$CACHE_DIRECTORY/diarize` under "
                             "systemd (the unit's CacheDirectory=whisperd: `/var/cache/whisperd/diarize`), else "
                             "`$XDG_CACHE_HOME/whisperd/diarize` (or `~/.cache/whisperd/diarize`).")


@dataclass
class EventsConfig:
    """Messages published while a job runs, besides its completion."""

    progress: bool = key(False,
                         doc='Publish "processing" messages to the result queue and the job\'s `reply_to`: one when a '
                             "job starts transcribing, then its progress (the share of the audio done) at most every "
                             "5 s.")


@dataclass
class ControlConfig:
    """The control socket, which `whisperd status` uses to ask the running daemon how it is doing."""

    socket: str = key("", _abs_or_empty, "must be an absolute path, or empty for the default",
                      doc="Unix socket that `whisperd status` talks to (mode 0660: the daemon's user and group only); "
                          "set it to run several daemons on one host. Empty = `$RUNTIME_DIRECTORY/control.sock` under "
                          "systemd (`/run/whisperd`), else `/run/whisperd/control.sock` as root, else "
                          "`$XDG_RUNTIME_DIR/whisperd/control.sock` (or `/tmp/whisperd-<uid>/control.sock`).")


@dataclass
class MetricsConfig:
    """The Prometheus endpoint that the supervisor serves."""

    listen: str = key("", listen_ok, "must be host:port (e.g. 127.0.0.1:9464), or empty to turn metrics off",
                      doc="host:port of the endpoint, e.g. `127.0.0.1:9464` (needs the prometheus_client package: "
                          "`pip install 'whisperd[metrics]'`); empty = off. Changing it takes a restart, not a reload.")


@dataclass
class ApiConfig:
    """Only for the optional reference HTTP API (`whisperd api`, `pip install 'whisperd[api]'`)."""

    listen: str = key("127.0.0.1:8080", lambda v: v != "" and listen_ok(v), "must be host:port (e.g. 127.0.0.1:8080)",
                      doc="host:port the API listens on. Beyond localhost, set a `token` and put TLS in front of it.")
    state_dir: str = key("/var/lib/whisperd/api", _abs_path, "must be an absolute path",
                         doc="Where the API keeps one small JSON file per task (status and completion), so that "
                             "`GET /transcriptions/{id}` still answers after it restarts.")
    upload_subdir: str = key("uploads", lambda v: bool(v) and not os.path.isabs(v) and ".." not in v.split("/"),
                             "must be a relative path inside storage.media_root",
                             doc="Uploads are saved under `storage.media_root/<upload_subdir>/` and sent as a relative "
                                 "`audio_path`. One larger than `limits.max_file_mb` is refused (413) as soon as its "
                                 "Content-Length or the bytes received pass it, so no more than that ever reaches the "
                                 "disk.")
    result_queue: str = key("", lambda v: v == "" or _queue_name(v), "must be a queue name, or empty",
                            doc="Queue the API reads completions from; empty = `broker.result_queue`. The API must be "
                                "its only consumer (it stores every completion it reads); another producer, such as "
                                "the .NET API, reads its own completions through `reply_to` instead.")
    token: str = key("",  # checked by the API itself, so that a bad value is never echoed
                     doc="Bearer token every /transcriptions request must send (`Authorization: Bearer <token>`); "
                         "empty = no authentication, and /healthz needs none. At least 16 printable ASCII characters "
                         "without spaces, e.g. `openssl rand -hex 32`; it is never logged or printed.")
    token_file: str = key("", _abs_or_empty, "must be an absolute path, or empty",
                          doc="Or a file holding the token, so that the secret need not be in the config file; it must "
                              "not be open to other users (mode 600 or 640), else the API refuses to start. Set "
                              "`token` or `token_file`, not both.")
    allowed_origins: list = key(
        [], lambda v: all(isinstance(x, str) and re.fullmatch(r"https?://[^/\s]+", x) for x in v),
        "must be a list of origins such as https://intranet.example (scheme://host[:port], no path)",
        doc='Web origins whose pages may POST uploads, e.g. `["https://intranet.example"]`; a POST with any other '
            "Origin, or with Sec-Fetch-Site cross-site or same-site, gets 403, so a web page in a browser on this host "
            "cannot submit jobs. Clients that are not browsers send no Origin; the API's own /docs page is same-origin "
            "when opened by IP address or as localhost (list a host name here).")
    upload_retention_s: float = key(0.0, _non_negative, "must be >= 0 seconds (0 = delete once the result is in)",
                                    doc="Seconds an upload is kept after its task's result (done or failed) is "
                                        "recorded; 0 = removed at once. Uploads nobody owns (left by an API that died "
                                        "mid-upload) are removed after an hour.")
    upload_idle_timeout_s: float = key(60.0, _positive, "must be > 0 seconds",
                                       doc="An upload that sends no data for this many seconds is dropped (408).")
    max_concurrent_uploads: int = key(4, _positive, "must be >= 1",
                                      doc="Uploads received at the same time; one more gets 503 with Retry-After. Each "
                                          "may reach `limits.max_file_mb` on disk while it arrives.")


@dataclass
class LoggingConfig:
    """What the daemon logs."""

    level: str = key("INFO", _log_level, "must be DEBUG, INFO, WARNING or ERROR",
                     doc="`DEBUG`, `INFO`, `WARNING` or `ERROR` (any case). Under systemd every line reaches the "
                         "journal with its priority.")
# fmt: on


@dataclass
class Config:
    """The whole file: one TOML table per section, in this order in docs/configuration.md."""

    broker: BrokerConfig = field(default_factory=BrokerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    workers: WorkersConfig = field(default_factory=WorkersConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    transcribe: TranscribeConfig = field(default_factory=TranscribeConfig)
    diarize: DiarizeConfig = field(default_factory=DiarizeConfig)
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
