"""The ``whisperd`` command: run, check-config, status, submit, api, model."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from whisperd import __version__, logs, models
from whisperd import config as config_mod
from whisperd.config import ConfigError
from whisperd.contract import speakers_problem
from whisperd.wire import FORMATS, unknown_formats


def _load(args: argparse.Namespace) -> config_mod.Config:
    try:
        return config_mod.load(args.config)
    except ConfigError as e:
        print(f"whisperd: config error: {e}", file=sys.stderr)
        sys.exit(2)


def cmd_run(args: argparse.Namespace) -> int:
    cfg = _load(args)
    logs.setup(cfg.logging.level)
    from whisperd.supervisor import Supervisor

    if not os.path.isdir(cfg.storage.media_root):
        print(f"whisperd: storage.media_root {cfg.storage.media_root} does not exist", file=sys.stderr)
        return 2
    if missing := models.missing_reason(cfg.model):
        print(f"whisperd: {missing}", file=sys.stderr)
        return 2
    return Supervisor(cfg).run()


def cmd_check_config(args: argparse.Namespace) -> int:
    path = config_mod.resolve_path(args.config)
    try:
        cfg = config_mod.load(args.config)
    except ConfigError as e:
        print(f"whisperd: config error: {e}", file=sys.stderr)
        return 1
    from whisperd import layout
    from whisperd.gpu import Gpus

    _, chosen = layout.resolve(cfg, Gpus().count)
    print(
        f"{path}: OK ({chosen.count} workers × {chosen.threads} threads here, {chosen.why}; "
        f"model {cfg.model.name}, queue {cfg.broker.job_queue})"
    )
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    cfg = _load(args)
    from whisperd import control

    try:
        status = control.query(control.client_candidates(cfg))
    except control.NotRunning as e:
        print(f"whisperd: the daemon is not running ({e})", file=sys.stderr)
        return 3  # LSB: program is not running
    except control.Busy as e:
        print(f"whisperd: the daemon is running but too busy to answer ({e})", file=sys.stderr)
        return 4  # LSB: program or service status is unknown
    try:
        control.check_answered_for(status, str(config_mod.resolve_path(args.config)))
    except control.OtherDaemon as e:
        print(f"whisperd: {e}", file=sys.stderr)
        return 4  # LSB: program or service status is unknown
    print(json.dumps(status, indent=2) if args.json else control.format_status(status))
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    cfg = _load(args)
    from whisperd.submit import submit

    missing = [f for f in args.files if not f.is_file()]
    if missing:
        print(f"whisperd: no such file: {missing[0]}", file=sys.stderr)
        return 2
    formats = args.format.split(",") if args.format else None
    if formats and unknown_formats(formats):
        print(f"whisperd: --format takes a comma-separated list from {', '.join(FORMATS)}", file=sys.stderr)
        return 2
    if args.output and not args.wait:
        print("whisperd: --output needs --wait (results are copied as they arrive)", file=sys.stderr)
        return 2
    counts = {"speakers": args.speakers, "min_speakers": args.min_speakers, "max_speakers": args.max_speakers}
    problem = speakers_problem(args.diarize, counts, cfg.diarize.max_speakers)
    if problem is not None:  # refused here rather than as a failed completion from every worker
        print(f"whisperd: {problem}", file=sys.stderr)
        return 2
    return submit(cfg, args.files, args.wait, args.language, formats, args.output, args.timeout, args.progress,
                  diarize=args.diarize, **counts)  # fmt: skip


def cmd_api(args: argparse.Namespace) -> int:
    cfg = _load(args)
    logs.setup(cfg.logging.level)
    try:
        from whisperd.api import serve
    except ImportError as e:
        print(f"whisperd: the API needs its extra packages (pip install 'whisperd[api]'): {e}", file=sys.stderr)
        return 2
    if args.listen and not config_mod.listen_ok(args.listen):
        print("whisperd: --listen takes HOST:PORT", file=sys.stderr)
        return 2
    return serve(cfg, args.listen)


def _model_settings(args: argparse.Namespace) -> config_mod.ModelConfig:
    """The [model] section, with --root/--mirror applied; no config file is needed when none exists
    (fetching on a machine with network, to carry the files to one without)."""
    path = config_mod.resolve_path(args.config)
    model = _load(args).model if args.config or path.exists() else config_mod.ModelConfig()
    if args.root:
        model.download_root = str(args.root.resolve())
    if getattr(args, "mirror", None):
        model.mirror = args.mirror
    if getattr(args, "engine", None):
        model.engine = args.engine
    return model


def cmd_model_fetch(args: argparse.Namespace) -> int:
    model = _model_settings(args)
    try:
        if model.engine == "faster-whisper":
            path = models.fetch_ctranslate2(args.name, Path(model.download_root))
            print(f"{path}/: installed ({sum(f.stat().st_size for f in path.iterdir()) / 1e6:.1f} MB)")
            return 0
        path = models.fetch(args.name, Path(model.download_root), args.url, model.mirror)
    except models.ModelError as e:
        print(f"whisperd: {e}", file=sys.stderr)
        return 1
    print(f"{path}: installed ({path.stat().st_size / 1e6:.1f} MB, SHA-256 {models.sha256_of(path)} checked)")
    return 0


def cmd_model_list(args: argparse.Namespace) -> int:
    model = _model_settings(args)
    root = Path(model.download_root)
    found = models.installed(root)
    if found:
        print(f"{'NAME':<16} {'ENGINE':<15} {'SIZE':>10}  {'CHECKSUM':<10} PATH")
        for m in found:
            print(f"{m.name:<16} {m.engine:<15} {m.size / 1e6:>7.1f} MB  {m.checksum:<10} {m.path}")
        for m in found:
            if m.problem:
                print(f"whisperd: {m.problem}", file=sys.stderr)
    else:
        print(f"no models in {root}")
    missing = models.missing_reason(model)
    if not models.is_installed(model):
        print(f"model.name = {model.name!r}: not installed" + (f" ({missing})" if missing else ", fetched on start"))
    return 1 if any(m.checksum in models.BAD_STATES for m in found) else 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="whisperd", description="Whisper transcription daemon for RabbitMQ jobs.")
    p.add_argument("--version", action="version", version=f"whisperd {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    config_help = f"config file (default: ${config_mod.ENV_VAR}, else {config_mod.DEFAULT_PATH})"

    run = sub.add_parser("run", help="run the daemon (supervisor and workers) in the foreground")
    run.add_argument("--config", help=config_help)
    run.set_defaults(func=cmd_run)

    check = sub.add_parser("check-config", help="validate the config file and exit")
    check.add_argument("--config", help=config_help)
    check.set_defaults(func=cmd_check_config)

    status = sub.add_parser("status", help="show the running daemon's workers, jobs and queue depths")
    status.add_argument("--config", help=config_help)
    status.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    status.set_defaults(func=cmd_status)

    submit = sub.add_parser("submit", help="copy audio files into media_root and queue them")
    submit.add_argument("files", nargs="+", type=Path, metavar="FILE")
    submit.add_argument("--config", help=config_help)
    submit.add_argument("--wait", action="store_true", help="wait for the transcripts and print them")
    submit.add_argument("--language", help="ISO language code (default: detect)")
    submit.add_argument("--format", help=f"comma-separated result formats from {','.join(FORMATS)}")
    submit.add_argument("--output", type=Path, help="with --wait: copy the result files into this directory")
    submit.add_argument("--timeout", type=float, default=3600.0, help="with --wait: give up after this many seconds")
    submit.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="with --wait: a progress bar per file on stderr (default: when stderr is a terminal)",
    )
    submit.add_argument(
        "--diarize",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="label each segment with its speaker, or not (default: the workers' diarize.default)",
    )
    submit.add_argument("--speakers", type=int, metavar="N", help="with diarization: exactly N speakers")
    submit.add_argument("--min-speakers", type=int, metavar="N", help="with diarization: at least N speakers")
    submit.add_argument("--max-speakers", type=int, metavar="N", help="with diarization: at most N speakers")
    submit.set_defaults(func=cmd_submit)

    api = sub.add_parser("api", help="run the reference HTTP API (POST/GET /transcriptions)")
    api.add_argument("--config", help=config_help)
    api.add_argument("--listen", help="HOST:PORT (default: api.listen)")
    api.set_defaults(func=cmd_api)

    model = sub.add_parser("model", help="fetch and list Whisper models in model.download_root")
    model_sub = model.add_subparsers(dest="model_command", required=True)
    fetch = model_sub.add_parser("fetch", help="download a model with whisper's SHA-256 check (atomic)")
    fetch.add_argument("name", metavar="NAME", help="a whisper model name (base, small, large-v3, turbo...)")
    fetch.add_argument("--url", help="download from this URL instead; its path must end in /<sha256>/<file>.pt")
    fetch.add_argument("--mirror", help="base URL of a mirror laid out as OpenAI's (default: model.mirror)")
    fetch.add_argument(
        "--engine",
        choices=config_mod.ENGINES,
        help="whose model: a .pt checkpoint or a CTranslate2 directory from the model hub (default: model.engine)",
    )
    listing = model_sub.add_parser("list", help="installed models, their size and checksum state")
    for sp, func in ((fetch, cmd_model_fetch), (listing, cmd_model_list)):
        sp.add_argument("--config", help=config_help)
        sp.add_argument("--root", type=Path, help="models directory (default: model.download_root)")
        sp.set_defaults(func=func)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
