"""Result formats through the real daemon: whisper's own writers, word timestamps on request."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

from devkit.clips import JFK

TIMESTAMP = r"\d\d:\d\d\.\d\d\d"


def test_every_format_with_word_timestamps(broker, daemon):
    daemon.stage(JFK.path, "jfk.flac")
    formats = ["json", "txt", "srt", "vtt", "tsv"]
    broker.publish({"task_id": "words-1", "audio_path": "jfk.flac", "formats": formats, "word_timestamps": True})
    broker.publish({"task_id": "plain-1", "audio_path": "jfk.flac", "formats": ["json"]})
    got = {c["task_id"]: c for c in broker.completions(2, 90)}
    c = got["words-1"]
    assert c["status"] == "done", c
    assert c["results"] == {f: str(daemon.results / f"words-1.{f}") for f in formats}

    result = json.loads(Path(c["results"]["json"]).read_text())
    assert result["text"].strip() == JFK.reference and result["language"] == "en"
    segments = result["segments"]
    assert segments and all({"id", "start", "end", "text", "tokens", "words"} <= set(s) for s in segments)
    words = [w for s in segments for w in s["words"]]
    assert "".join(w["word"] for w in words).strip() == JFK.reference
    assert all(0 <= w["start"] <= w["end"] <= 11.1 and 0 <= w["probability"] <= 1 for w in words)
    assert [w["start"] for w in words] == sorted(w["start"] for w in words)

    assert Path(c["results"]["txt"]).read_text().strip() == JFK.reference
    srt = Path(c["results"]["srt"]).read_text()
    assert re.match(rf"1\n00:{TIMESTAMP.replace('.', ',')} --> 00:{TIMESTAMP.replace('.', ',')}\n", srt), srt
    vtt = Path(c["results"]["vtt"]).read_text()
    assert vtt.startswith("WEBVTT\n") and re.search(rf"{TIMESTAMP} --> {TIMESTAMP}\n", vtt)
    for cue_text in (srt, vtt):
        assert "country" in cue_text and "ask not" in cue_text
    with open(c["results"]["tsv"], newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    assert rows[0] == ["start", "end", "text"]
    assert all(int(r[0]) <= int(r[1]) for r in rows[1:])  # milliseconds

    plain = json.loads((daemon.results / "plain-1.json").read_text())
    assert plain["segments"] and all("words" not in s for s in plain["segments"])
    assert set(got["plain-1"]["results"]) == {"json"}
    assert not (daemon.results / "plain-1.txt").exists()
