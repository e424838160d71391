"""Speed: request header parsing without the email package.

``http.server`` parses every request's header block with ``http.client.parse_headers``, which
hands it to ``email.parser.Parser`` (a general RFC 5322 feed parser: header folding, defects,
MIME bodies). In a cleanup benchmark that was about a sixth of the emulator's time under the GIL
(py-spy), for header blocks that are a dozen ``Name: value`` lines from an SDK.

``parse_headers`` here builds the very same ``HTTPMessage`` for such blocks: each line is split
at its first colon and stored with ``Message.set_raw`` after the value is trimmed exactly as the
email package's compat32 policy does (``header_source_parse``: leading spaces and tabs, trailing
CR and LF), and the message's payload is the empty string the parser leaves after the blank line.
Any block that is not plainly that — a folded (continuation) line, a line with no colon or an
empty or non-token name, a Unix "From " line, bytes outside US-ASCII, a ``multipart/*`` or
``message/*`` Content-Type (whose empty body the parser reads as MIME, with defects), a message
class other than ``HTTPMessage`` — is handed to the email parser unchanged, so its answer
(including its defects) is what it always was. Reading the lines (``http.client._read_headers``:
the line-length and header-count limits) is not changed.
"""

from __future__ import annotations

import email.parser
import http.client
import re
from typing import Any

# One plain line: a field name as the email package's feed parser recognises one (headerRE:
# printable US-ASCII but the colon) and HTTP's token rule (no separators), so a line it treats
# any other way (a defect, a continuation, a Unix From line) is not one; then the value the email
# package stores (the text after the colon without its leading spaces and tabs, and without the
# line's CRLF or LF), with no CR or LF in it, so a line with a bare CR (which the email parser
# splits) is not one either.
_LINE_TEXT = r"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*([^\r\n]*)\r?\n"
_LINE = re.compile(_LINE_TEXT)
_BLOCK = re.compile(f"(?:{_LINE_TEXT})*")

# Content types whose (empty) body the email parser parses as MIME parts or a message, with
# defects and a payload of its own.
_STRUCTURED = ("multipart/", "message/")

_original_parse_headers = http.client.parse_headers
_read_headers = http.client._read_headers  # noqa: SLF001 - the very reader parse_headers uses


def parse_headers(fp: Any, _class: type = http.client.HTTPMessage) -> Any:
    """``http.client.parse_headers`` with a fast path for plain header blocks."""
    lines = _read_headers(fp)
    message = _plain(lines, _class)
    if message is not None:
        return message
    return email.parser.Parser(_class=_class).parsestr(b"".join(lines).decode("iso-8859-1"))


def _plain(lines: list[bytes], _class: type) -> Any:
    """The message for a block of plain ``Name: value`` lines, or None to let the email parser
    decide. ``lines`` ends with its terminator (a blank line, or b"" at the end of input)."""
    if _class is not http.client.HTTPMessage:
        return None  # another class may take another policy from the parser
    fields = plain_fields(lines)
    return None if fields is None else message_of(fields)


def plain_fields(lines: list[bytes]) -> list[tuple[str, str]] | None:
    """The ``(name, value)`` pairs of a block of plain ``Name: value`` lines, in order, each value
    trimmed as the email package stores it; None for any block the email parser must read.
    ``lines`` ends with its terminator (a blank line, or b"" at the end of input)."""
    if not lines or lines[-1] not in (b"\r\n", b"\n"):
        return None  # no blank line: the parser sees a truncated block
    block = b"".join(lines[:-1])
    if not block.isascii():
        return None
    text = block.decode("ascii")
    if _BLOCK.fullmatch(text) is None:
        return None
    fields = _LINE.findall(text)
    for name, value in fields:
        if len(name) == 12 and name.lower() == "content-type" and value.lstrip().lower().startswith(_STRUCTURED):
            return None  # the parser reads a multipart or message/* body after the block
    return fields


def message_of(fields: list[tuple[str, str]]) -> http.client.HTTPMessage:
    """The ``HTTPMessage`` the email parser builds for the plain block ``fields`` came from."""
    message = http.client.HTTPMessage()
    for name, value in fields:
        message.set_raw(name, value)
    message.set_payload("")
    return message


_installed = False


def install() -> None:
    """Makes ``http.client.parse_headers`` take the fast path: ``http.server`` calls it for every
    request, and so does ``http.client.HTTPResponse`` for any HTTP client in this process (the
    emulator's own outbound calls, boto3 in the tests' process), with the same answers."""
    global _installed
    if _installed:
        return
    http.client.parse_headers = parse_headers
    _installed = True
