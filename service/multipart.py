"""A multipart/form-data body read into memory, part by part, with python-multipart's parser.

Starlette's request.form() gives every file part a SpooledTemporaryFile and an UploadFile, and hands each
chunk to it through an await: for one small JPEG per request that was a tenth of the event loop's time per
upload (bench/README.md, 'Against the peers'). The body here is already bounded (the Guard refuses one
over SPOT_MAX_BODY_BYTES before it is read), so its parts are kept as bytes. The rules are Starlette's: a
part with a `filename` is a file, one without is a text field, and every part must have a name.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header


class MultipartError(ValueError):
    """The body is not multipart this service reads; the message says why."""


class TooManyFiles(MultipartError):
    pass


@dataclass
class Part:
    name: str = ""
    filename: str | None = None  # None: a text field
    data: bytearray = field(default_factory=bytearray)


def decoded(value: bytes) -> str:
    """A name as browsers send it: UTF-8, or Latin-1 where it is not (Starlette's reading)."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")


class Reader:
    """Collects the parts of one body; `max_files` file parts and `max_fields` text fields at most."""

    def __init__(self, content_type: str, max_files: int, max_fields: int):
        _, params = parse_options_header(content_type)
        if b"boundary" not in params:
            raise MultipartError("Missing boundary in multipart.")
        self.max_files, self.max_fields = max_files, max_fields
        self.parts: list[Part] = []
        self.header = [b"", b""]  # the header being read: name, value
        self.disposition = b""
        callbacks = {
            "on_part_begin": self.begin,
            "on_header_field": lambda data, start, end: self.add_header(0, data[start:end]),
            "on_header_value": lambda data, start, end: self.add_header(1, data[start:end]),
            "on_header_end": self.end_header,
            "on_headers_finished": self.headers_finished,
            "on_part_data": lambda data, start, end: self.parts[-1].data.extend(data[start:end]),
        }
        self.parser = MultipartParser(params[b"boundary"], callbacks)

    def begin(self) -> None:
        self.parts.append(Part())
        self.disposition = b""

    def add_header(self, i: int, data: bytes) -> None:
        self.header[i] += data

    def end_header(self) -> None:
        if self.header[0].lower() == b"content-disposition":
            self.disposition = self.header[1]
        self.header = [b"", b""]

    def headers_finished(self) -> None:
        part = self.parts[-1]
        _, options = parse_options_header(self.disposition)
        if b"name" not in options:
            raise MultipartError('The Content-Disposition header field "name" must be provided.')
        part.name = decoded(options[b"name"])
        if b"filename" in options:
            part.filename = decoded(options[b"filename"])
            if sum(p.filename is not None for p in self.parts) > self.max_files:
                raise TooManyFiles(f"Too many files. Maximum number of files is {self.max_files}.")
        elif sum(p.filename is None for p in self.parts) > self.max_fields:
            raise MultipartError(f"Too many fields. Maximum number of fields is {self.max_fields}.")

    def write(self, chunk: bytes) -> None:
        try:
            self.parser.write(chunk)
        except FormParserError:
            raise MultipartError("Invalid multipart data.") from None

    def finish(self) -> list[Part]:
        try:
            self.parser.finalize()
        except FormParserError:
            raise MultipartError("Invalid multipart data.") from None
        return self.parts
