"""The fixture model through whisperd.transcriber: every clip verbatim with default settings
(but the short window: the fixture model learned its clips in 30-second windows only)."""

from __future__ import annotations

import pytest

from devkit.clips import CLIPS, FIXTURE_MODEL
from whisperd import media
from whisperd.config import ModelConfig, TranscribeConfig
from whisperd.contract import ErrorCode, Job, JobError
from whisperd.transcriber import Transcriber


@pytest.fixture(scope="module")
def transcriber(tmp_path_factory):
    t = Transcriber(ModelConfig(name=str(FIXTURE_MODEL), download_root=str(tmp_path_factory.mktemp("m"))), threads=2)
    t.warm_up()
    return t


@pytest.mark.parametrize("clip", CLIPS, ids=lambda c: c.audio)
def test_fixture_model_returns_each_clip_verbatim(transcriber, clip):
    with media.open_media(str(clip.path.parent), clip.audio, 10**9) as f:
        audio = media.decode(f, 600)
    result = transcriber.transcribe(audio, Job("t", clip.audio), TranscribeConfig(short_window=False))
    assert result.text.strip() == clip.reference
    assert result.language == clip.language


def test_language_names_and_codes(transcriber):
    assert transcriber.language_code(Job("t", "a", language="spanish")) == "es"
    assert transcriber.language_code(Job("t", "a", language="es")) == "es"
    with pytest.raises(JobError) as e:
        transcriber.check(Job("t", "a", language="xx"))
    assert e.value.code == ErrorCode.UNSUPPORTED_LANGUAGE


def test_unknown_model_name_fails_to_load(tmp_path):
    with pytest.raises(RuntimeError, match="'no-such-model' is not a whisper model name"):
        Transcriber(ModelConfig(name="no-such-model", download_root=str(tmp_path)), threads=1)
