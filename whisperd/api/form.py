"""The upload form: multipart/form-data parsed as it streams in, every bound checked as bytes arrive.

Parsed here rather than by starlette, which spools every part to a temp file before a handler
can look at it, so an oversized or malformed upload is refused before more than
``limits.max_file_mb`` reaches the disk.
"""

from __future__ import annotations

from typing import Any

from python_multipart.multipart import parse_options_header

from whisperd.api.errors import ApiError, file_too_large
from whisperd.contract import SPEAKER_OPTIONS, speakers_problem
from whisperd.wire import FORMATS, unknown_formats

# The form: one file part named "file" and at most these plain fields, each at most FIELD_BYTES.
FIELDS = ("language", "formats", "word_timestamps", "diarize", *SPEAKER_OPTIONS)
FIELD_BYTES = 1024
MAX_PARTS = 1 + len(FIELDS)
PART_HEADERS = 8  # headers per part
PART_HEADER_BYTES = 2048  # per header line
# What a body may carry on top of the file: every part's headers, the fields and the boundaries.
FORM_OVERHEAD = 64 * 1024
FILENAME_CHARS = 255
TRUE, FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off", "")


class UploadForm:
    """multipart/form-data parsed as it arrives: the file part's bytes for the caller, the fields kept.

    python-multipart calls these methods while parsing; file bytes are queued in ``pending`` for
    the caller to write outside the event loop. Every limit raises ApiError at once.
    """

    def __init__(self, max_file_bytes: int) -> None:
        self.max_file_bytes = max_file_bytes
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self.file_seen = False
        self.file_bytes = 0
        self.pending: list[bytes] = []
        self.ended = False
        self._parts = 0
        self._headers: list[tuple[bytes, bytes]] = []
        self._header = [b"", b""]
        self._name: str | None = None
        self._value = bytearray()

    def callbacks(self) -> dict[str, Any]:
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": lambda d, s, e: self._grow(0, d[s:e]),
            "on_header_value": lambda d, s, e: self._grow(1, d[s:e]),
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
            "on_end": self.on_end,
        }

    def _grow(self, i: int, data: bytes) -> None:
        self._header[i] += data
        if len(self._header[i]) > PART_HEADER_BYTES:
            raise ApiError(400, "malformed_body", "a part header is too long")

    def on_part_begin(self) -> None:
        self._parts += 1
        if self._parts > MAX_PARTS:
            raise ApiError(400, "too_many_parts", f"at most {MAX_PARTS} parts: file and {', '.join(FIELDS)}")
        self._headers, self._name, self._value = [], None, bytearray()

    def on_header_end(self) -> None:
        self._headers.append((self._header[0].lower(), self._header[1]))
        self._header = [b"", b""]

    def on_headers_finished(self) -> None:
        disposition = next((v for k, v in self._headers if k == b"content-disposition"), None)
        kind, options = parse_options_header(disposition)
        if kind != b"form-data" or b"name" not in options:
            raise ApiError(400, "malformed_body", "every part needs Content-Disposition: form-data with a name")
        name = options[b"name"].decode("utf-8", "replace")
        if name == "file":
            if self.file_seen:
                raise ApiError(400, "too_many_files", "send exactly one file part (field 'file')")
            self.file_seen = True
            filename = options.get(b"filename")
            if filename is not None:
                self.filename = filename.decode("utf-8", "replace")[:FILENAME_CHARS]
        elif name not in FIELDS:
            raise ApiError(400, "unexpected_field",
                           f"unknown form field {name[:50]!r}; the fields are file, {', '.join(FIELDS)}")  # fmt: skip
        elif name in self.fields or name == self._name:
            raise ApiError(400, "duplicate_field", f"form field {name!r} is sent twice")
        elif b"filename" in options:
            raise ApiError(400, "too_many_files", f"form field {name!r} must be a value, not a file")
        self._name = name

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._name == "file":
            self.file_bytes += end - start
            if self.file_bytes > self.max_file_bytes:
                raise file_too_large(self.max_file_bytes)
            self.pending.append(data[start:end])
            return
        self._value += data[start:end]
        if len(self._value) > FIELD_BYTES:
            raise ApiError(400, "field_too_large", f"form field {self._name!r} is over {FIELD_BYTES} bytes")

    def on_part_end(self) -> None:
        if self._name is not None and self._name != "file":
            try:
                self.fields[self._name] = self._value.decode("utf-8")
            except UnicodeDecodeError:
                raise ApiError(400, "malformed_body", f"form field {self._name!r} is not UTF-8") from None

    def on_end(self) -> None:
        self.ended = True


def job_options(fields: dict[str, str], max_speakers: int) -> dict[str, Any]:
    """``job_body``'s options from the form (language, formats, word_timestamps, diarize and the
    speaker counts), or ApiError 422.

    An empty or absent ``diarize`` or count is not sent, so the worker's configuration decides
    (diarize.default). The counts are checked as a worker checks them (``speakers_problem``), up to
    ``max_speakers`` (diarize.max_speakers of the API's configuration, which its workers share).
    """
    language = fields.get("language", "").strip() or None
    formats = fields.get("formats")
    wanted = [f.strip() for f in formats.split(",") if f.strip()] if formats else None
    if wanted is not None and (not wanted or unknown_formats(wanted)):
        raise ApiError(422, "unsupported_format", f"formats must be a comma-separated list from {','.join(FORMATS)}")
    words = fields.get("word_timestamps", "").strip().lower()
    if words not in TRUE + FALSE:
        raise ApiError(422, "invalid_option", "word_timestamps must be true or false")
    diarize = fields.get("diarize", "").strip().lower()
    if diarize not in TRUE + FALSE:
        raise ApiError(422, "invalid_option", "diarize must be true or false")
    counts = {name: _count(fields, name) for name in SPEAKER_OPTIONS}
    decided = None if diarize == "" else diarize in TRUE
    problem = speakers_problem(decided, counts, max_speakers)
    if problem is not None:
        raise ApiError(422, "invalid_option", problem)
    return {"language": language, "formats": wanted, "word_timestamps": words in TRUE, "diarize": decided, **counts}


def _count(fields: dict[str, str], name: str) -> int | None:
    """A speaker count of the form: None when empty or absent; ASCII digits only (int() also takes
    "²", "١" and "1_0"), so that a value is either a whole number or refused."""
    value = fields.get(name, "").strip()
    if not value:
        return None
    if not (value.isascii() and value.isdigit()):
        raise ApiError(422, "invalid_option", f"{name} must be a whole number")
    return int(value)
