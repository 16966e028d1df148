"""Finding and decoding audio (unit tests of whisperd.media with real files and real ffmpeg)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from devkit.clips import CLIPS, JFK, SPANISH
from whisperd import media
from whisperd.contract import ErrorCode, JobError


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "media"
    (r / "sub dir").mkdir(parents=True)
    shutil.copyfile(JFK.path, r / "sub dir" / "a b.flac")
    return r


def load(root, path, max_bytes=10**9, max_s=3600.0):
    with media.open_media(str(root), path, max_bytes, "t") as f:
        return media.decode(f, max_s, "t")


def code_of(root, path, **kw):
    with pytest.raises(JobError) as e:
        load(root, path, **kw)
    return e.value.code


def test_decodes_like_whisper(root):
    import whisper

    audio = load(root, "sub dir/a b.flac")
    assert audio.dtype.name == "float32"
    assert (audio == whisper.load_audio(str(JFK.path))).all()
    assert (load(root, str(root / "sub dir" / "a b.flac")) == audio).all()  # absolute inside root


def test_paths_outside_media_root_are_refused(root, tmp_path):
    secret = tmp_path / "secret.flac"
    shutil.copyfile(JFK.path, secret)
    os.symlink(secret, root / "link.flac")
    os.symlink(tmp_path, root / "sub dir" / "up")
    for path in ("../secret.flac", str(secret), "link.flac", "sub dir/up/secret.flac", "sub dir/../../secret.flac"):
        assert code_of(root, path) == ErrorCode.PATH_OUTSIDE_MEDIA_ROOT, path


def test_symlink_inside_media_root_is_fine(root):
    os.symlink(root / "sub dir" / "a b.flac", root / "inside.flac")
    assert len(load(root, "inside.flac")) == 16000 * 11


def test_file_problems_have_their_own_codes(root):
    (root / "empty.wav").write_bytes(b"")
    (root / "junk.mp3").write_bytes(os.urandom(4096))
    (root / "cut.flac").write_bytes(JFK.path.read_bytes()[:2000])
    os.mkfifo(root / "pipe.wav")
    assert code_of(root, "nope.wav") == ErrorCode.FILE_NOT_FOUND
    assert code_of(root, "sub dir") == ErrorCode.NOT_A_FILE
    assert code_of(root, "pipe.wav") == ErrorCode.NOT_A_FILE
    assert code_of(root, "empty.wav") == ErrorCode.EMPTY_FILE
    assert code_of(root, "junk.mp3") == ErrorCode.INVALID_AUDIO
    assert code_of(root, "cut.flac") == ErrorCode.INVALID_AUDIO
    assert code_of(root, "sub dir/a b.flac", max_bytes=1000) == ErrorCode.FILE_TOO_LARGE
    assert code_of(root, "sub dir/a b.flac", max_s=5.0) == ErrorCode.AUDIO_TOO_LONG


def test_playlists_cannot_pull_in_other_files(root, tmp_path):
    segment = tmp_path / "outside.ts"
    encode = ["ffmpeg", "-nostdin", "-v", "error", "-i", str(JFK.path), "-c:a", "aac", "-f", "mpegts", str(segment)]
    subprocess.run(encode, check=True)
    (root / "list.m3u8").write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:11\n#EXTINF:11,\n{segment}\n#EXT-X-ENDLIST\n")
    # Plain ffmpeg follows the playlist out of the media directory ...
    plain = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(root / "list.m3u8"), "-f", "null", "-"],
                           capture_output=True)  # fmt: skip
    assert plain.returncode == 0
    # ... whisperd's decoder does not.
    assert code_of(root, "list.m3u8") == ErrorCode.INVALID_AUDIO
    (root / "cat.ffconcat").write_text(f"ffconcat version 1.0\nfile '{segment}'\n")
    assert code_of(root, "cat.ffconcat") == ErrorCode.INVALID_AUDIO


@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("half.flac", lambda: JFK.path.read_bytes()[: JFK.path.stat().st_size // 2]),
        ("half.wav", lambda: SPANISH.path.read_bytes()[: SPANISH.path.stat().st_size // 3]),
    ],
)
def test_truncated_uploads_are_refused_not_transcribed_in_part(root, name, make):
    """A cut-off upload decodes partly without an ffmpeg error; whisperd must still refuse it."""
    (root / name).write_bytes(make())
    with pytest.raises(JobError) as e:
        load(root, name)
    assert e.value.code == ErrorCode.INVALID_AUDIO
    assert "damaged or truncated" in e.value.message


def test_truncated_mp3_is_refused_and_a_whole_one_decodes(root):
    whole = root / "whole.mp3"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(JFK.path), "-b:a", "64k", str(whole)], check=True)
    assert abs(len(load(root, "whole.mp3")) / 16000 - 11.0) < 0.1
    (root / "cut.mp3").write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    assert code_of(root, "cut.mp3") == ErrorCode.INVALID_AUDIO


@pytest.mark.parametrize("clip", CLIPS, ids=lambda c: c.audio)
def test_every_sample_clip_decodes_without_a_damage_warning(root, clip):
    shutil.copyfile(clip.path, root / clip.audio)
    assert len(load(root, clip.audio)) > 16000


@pytest.mark.parametrize(
    ("ext", "opts"),
    [("m4a", ["-c:a", "aac"]), ("ogg", ["-c:a", "libopus"]), ("webm", ["-c:a", "libopus"]), ("wma", ["-c:a", "wmav2"]),
     ("caf", []), ("wav", ["-ar", "8000", "-ac", "1"])],
)  # fmt: skip
def test_common_upload_formats_decode_without_false_damage(root, ext, opts):
    out = root / f"jfk.{ext}"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(JFK.path), *opts, str(out)], check=True)
    assert abs(len(load(root, out.name)) / 16000 - 11.0) < 0.1
