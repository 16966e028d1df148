"""whisperd.pipeline with the fixture model: the thread count a reload sets reaches ffmpeg too."""

from __future__ import annotations

import logging
import shutil

from devkit.clips import FIXTURE_MODEL, JFK
from whisperd import config, media
from whisperd.contract import job_body
from whisperd.logs import Labelled
from whisperd.pipeline import Pipeline
from whisperd.results import ResultStore
from whisperd.transcriber import Transcriber


def test_a_new_thread_count_reaches_the_decoder_and_the_model(tmp_path, monkeypatch):
    """Issue 15: a thread-count change on SIGHUP reached the transcriber but not the pipeline, so
    ffmpeg kept the old ``-threads``. The count now lives in one place."""
    (tmp_path / "media").mkdir()
    shutil.copyfile(JFK.path, tmp_path / "media" / "jfk.flac")
    cfg = config.parse(
        {
            "model": {"name": str(FIXTURE_MODEL), "download_root": str(tmp_path)},
            "storage": {"media_root": str(tmp_path / "media"), "results_dir": str(tmp_path / "results")},
            "transcribe": {"short_window": False},  # the fixture model knows 30-second windows only
        }
    )
    transcriber = Transcriber(cfg.model, threads=1)
    log = Labelled(logging.getLogger("whisperd.worker"), "worker 1")
    pipeline = Pipeline(cfg, transcriber, ResultStore(cfg.storage.results_dir), "host:worker-1:1", log)
    decoded_with = []
    real_decode = media.decode

    def decode(f: media.MediaFile, max_duration_s: float, task_id: str | None = None, threads: int = 1):
        decoded_with.append(threads)
        return real_decode(f, max_duration_s, task_id, threads)

    monkeypatch.setattr(media, "decode", decode)
    pipeline.set_threads(2)  # what the worker does when the supervisor sends a new count
    outcome = pipeline.run(job_body("threads-1", "jfk.flac"))
    assert outcome.completion is not None and outcome.completion.text == JFK.reference
    assert decoded_with == [2]
    assert (pipeline.threads, transcriber.threads) == (2, 2)
