"""The derived worker memory ceiling (workers.hard_rss_mb = -1)."""

from __future__ import annotations

import math

from devkit.clips import FIXTURE_MODEL
from whisperd import config
from whisperd.memory import hard_rss_limit_mb


def _cfg(**sections: dict) -> config.Config:
    return config.parse(sections)


def test_an_explicit_value_wins_and_zero_means_off():
    assert hard_rss_limit_mb(_cfg(workers={"hard_rss_mb": 3000})) == 3000
    assert hard_rss_limit_mb(_cfg(workers={"hard_rss_mb": 0})) == 0


def test_derived_from_the_model_and_the_length_limit():
    small_4h = hard_rss_limit_mb(_cfg(model={"name": "small", "download_root": "/nonexistent"}))
    assert small_4h == 1024 + 600 + 3 * 484 + round(0.9 * 4 * 3600)
    large_4h = hard_rss_limit_mb(_cfg(model={"name": "large-v3", "download_root": "/nonexistent"}))
    assert large_4h - small_4h == 3 * (3087 - 484)
    short = hard_rss_limit_mb(_cfg(model={"name": "small", "download_root": "/nonexistent"},
                                   limits={"max_duration_s": 600.0}))  # fmt: skip
    assert small_4h - short == round(0.9 * (4 * 3600 - 600))


def test_a_checkpoint_on_disk_counts_with_its_size_and_never_below_max_rss():
    size_mb = FIXTURE_MODEL.stat().st_size / 2**20
    derived = hard_rss_limit_mb(_cfg(model={"name": str(FIXTURE_MODEL)}, limits={"max_duration_s": 60.0}))
    assert derived == math.ceil(1024 + 600 + 3 * size_mb + 0.9 * 60.0)
    assert hard_rss_limit_mb(_cfg(model={"name": str(FIXTURE_MODEL)}, workers={"max_rss_mb": 90000})) == 90000


def test_a_ctranslate2_directory_counts_with_its_weights(real_weights):
    directory = real_weights.ctranslate2_dir("base")
    size_mb = (directory / "model.bin").stat().st_size / 2**20
    cfg = _cfg(model={"engine": "faster-whisper", "name": str(directory)}, limits={"max_duration_s": 60.0})
    assert hard_rss_limit_mb(cfg) == math.ceil(1024 + 600 + 3 * size_mb + 0.9 * 60.0)
