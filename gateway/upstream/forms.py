"""A multipart/form-data body relayed with one field rewritten (`/v1/audio/transcriptions`).

The client's body is kept as bytes: only the value of the `model` field is replaced per target,
so the file and every other field reach the upstream byte for byte, with the client's own
Content-Type (and its boundary). The parse finds each part's delimiter with `bytes.find` and
reads only the part headers; a file's content is never copied or scanned in Python. The body
arrives whole and within GATEWAY_MAX_BODY_BYTES (the front layer's guard counts it).
"""

from __future__ import annotations

import re

from gateway.errors import BadRequest

_BOUNDARY = re.compile(r'(?i);\s*boundary\s*=\s*(?:"([^"]{1,70})"|([^\s;"]{1,70}))')
_NAME = re.compile(r'(?i)(?:^|;)\s*name\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s;]+))')
_FILENAME = re.compile(r"(?i);\s*filename\*?\s*=")
_MAX_HEADER_BYTES = 8 * 1024  # one part's header block


class MultipartForm:
    """The client's form: its content type, its bytes, and where each plain field's value lies."""

    __slots__ = ("content_type", "_body", "_fields")

    def __init__(self, content_type: str, body: bytes, fields: dict[str, tuple[int, int]]) -> None:
        self.content_type = content_type
        self._body = body
        self._fields = fields  # field name -> (start, end) of its value in `_body` (the first of a name)

    @classmethod
    def parse(cls, content_type: str, body: bytes) -> MultipartForm:
        """The form, or a 400 saying what is wrong with it."""
        if not content_type.lower().startswith("multipart/form-data"):
            raise BadRequest("the request body must be multipart/form-data (a `file` and a `model` field)")
        found = _BOUNDARY.search(content_type)
        if found is None:
            raise BadRequest("the multipart/form-data content type has no boundary")
        delimiter = b"--" + (found.group(1) or found.group(2)).encode("latin-1")
        return cls(content_type, body, _fields(body, delimiter))

    def field(self, name: str) -> str | None:
        """A plain (not file) field's value as text; None when the form has no such field."""
        span = self._fields.get(name)
        return None if span is None else self._body[span[0]:span[1]].decode("utf-8", errors="replace")

    def with_field(self, name: str, value: str) -> bytes:
        """The body with that field's value replaced (the field must be there)."""
        start, end = self._fields[name]
        return self._body[:start] + value.encode() + self._body[end:]


def _fields(body: bytes, delimiter: bytes) -> dict[str, tuple[int, int]]:
    """Where each named plain field's value lies; a 400 for a body that is not well formed."""
    if body.startswith(delimiter):
        position = len(delimiter)
    else:  # a preamble, then CRLF and the first delimiter
        found = body.find(b"\r\n" + delimiter)
        if found < 0:
            raise BadRequest("the multipart body holds no part with its boundary")
        position = found + 2 + len(delimiter)
    separator = b"\r\n" + delimiter
    fields: dict[str, tuple[int, int]] = {}
    while True:
        if body.startswith(b"--", position):
            return fields  # the close delimiter: what follows is the epilogue
        line_end = body.find(b"\r\n", position)
        if line_end < 0 or body[position:line_end].strip(b" \t"):
            raise BadRequest("the multipart body is malformed after a boundary")
        headers_end = body.find(b"\r\n\r\n", line_end, line_end + _MAX_HEADER_BYTES)  # at line_end: no headers
        if headers_end < 0:
            raise BadRequest("a part of the multipart body has no end to its headers")
        start = headers_end + 4
        end = body.find(separator, start)
        if end < 0:
            raise BadRequest("the multipart body ends without its closing boundary")
        name = _plain_field_name(body[line_end + 2:headers_end])
        if name is not None:
            fields.setdefault(name, (start, end))
        position = end + len(separator)


def _plain_field_name(headers: bytes) -> str | None:
    """The `name` of a form-data part that is not a file, from its Content-Disposition."""
    for line in headers.decode("utf-8", errors="replace").split("\r\n"):
        key, _, value = line.partition(":")
        if key.strip().lower() != "content-disposition":
            continue
        if _FILENAME.search(value):
            return None
        found = _NAME.search(value)
        if found is None:
            return None
        return found.group(1).replace('\\"', '"') if found.group(1) is not None else found.group(2)
    return None
