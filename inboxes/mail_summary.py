"""A stored message read as mail for the admin: its headers, a summary of its
MIME parts and a bounded preview of its text, whatever its size. (A 7 MB message
shown whole made a 7.2 MB page that took 4.5 s to load.)

Only header blocks go through the email parser. Bodies are split at their MIME
boundaries with ``bytes.find`` and measured, never parsed line by line: the
stdlib parser takes about 0.4 s for a 7 MB message with an attachment, this a
few milliseconds."""

from __future__ import annotations

import base64
import binascii
import quopri
from dataclasses import dataclass
from email import policy
from email.header import decode_header, make_header
from email.message import Message as EmailMessage
from email.parser import BytesHeaderParser

PREVIEW_CHARS = 20_000  # of the first text part; the rest is in the .eml
MAX_HEADERS = 100
MAX_HEADER_CHARS = 2_000
MAX_PARTS = 100
MAX_DEPTH = 8  # multiparts within multiparts

_HEADER_PARSER = BytesHeaderParser(policy=policy.compat32)  # keeps malformed mail as it is


@dataclass(frozen=True)
class Part:
    path: str  # "1", "2.1": where it sits in the MIME tree ("" for the message itself)
    content_type: str
    size: int  # bytes once decoded (base64 worked out from its length)
    filename: str


@dataclass(frozen=True)
class MailSummary:
    headers: list[tuple[str, str]]
    headers_left_out: int
    parts: list[Part]
    preview: str
    preview_cut: bool

    @classmethod
    def of(cls, raw: bytes) -> MailSummary:
        head, _ = _split_head(raw)
        items = _HEADER_PARSER.parsebytes(head).items()
        parts: list[Part] = []
        texts: list[tuple[EmailMessage, bytes]] = []
        _scan(raw, "", 0, parts, texts)
        preview, cut = _preview(texts)
        return cls(
            headers=[(name, _header_text(value)[:MAX_HEADER_CHARS]) for name, value in items[:MAX_HEADERS]],
            headers_left_out=max(0, len(items) - MAX_HEADERS),
            parts=parts,
            preview=preview,
            preview_cut=cut,
        )


def _split_head(entity: bytes) -> tuple[bytes, bytes]:
    """An entity's header block and its body (RFC 5322: an empty line between)."""
    if entity.startswith((b"\r\n", b"\n")):
        return b"", entity.split(b"\n", 1)[1]
    crlf = entity.find(b"\r\n\r\n")
    lf = entity.find(b"\n\n", 0, len(entity) if crlf == -1 else crlf)  # only a bare-LF blank line before it
    if crlf != -1 and (lf == -1 or crlf < lf):
        return entity[: crlf + 2], entity[crlf + 4 :]
    if lf != -1:
        return entity[: lf + 1], entity[lf + 2 :]
    return entity, b""


def _scan(entity: bytes, path: str, depth: int, parts: list[Part], texts: list[tuple[EmailMessage, bytes]]) -> None:
    if len(parts) >= MAX_PARTS:
        return
    head, body = _split_head(entity)
    headers = _HEADER_PARSER.parsebytes(head)
    not_headers = headers.get_payload()  # lines of a malformed header block: the parser's body
    if isinstance(not_headers, str) and not_headers:
        body = not_headers.encode("ascii", "surrogateescape") + b"\r\n" + body
    content_type = headers.get_content_type()
    boundary = headers.get_boundary() if headers.get_content_maintype() == "multipart" else None
    if boundary and depth < MAX_DEPTH:
        parts.append(Part(path, content_type, 0, ""))
        for number, child in enumerate(_children(body, boundary.encode("ascii", "replace")), start=1):
            _scan(child, f"{path}.{number}" if path else str(number), depth + 1, parts, texts)
        return
    filename = headers.get_filename() or ""
    parts.append(Part(path or "1", content_type, _decoded_size(headers, body), _header_text(filename)))
    if headers.get_content_maintype() == "text" and not filename:
        texts.append((headers, body))


def _children(body: bytes, boundary: bytes) -> list[bytes]:
    """The parts between a multipart body's delimiter lines (RFC 2046 5.1.1):
    ``--boundary`` at the start of a line, ``--boundary--`` after the last part.
    The line break before a delimiter belongs to the delimiter."""
    delimiter = b"--" + boundary
    lines: list[tuple[int, int, bool]] = []  # (line break before it, start of the next line, closing)
    at = body.find(delimiter)
    while at != -1:
        if at == 0 or body[at - 1] == 0x0A:  # "\n": at the start of a line
            closing = body.startswith(b"--", at + len(delimiter))
            line_end = body.find(b"\n", at)
            before = at - 2 if body[at - 2 : at] == b"\r\n" else max(at - 1, 0)
            lines.append((before, len(body) if line_end == -1 else line_end + 1, closing))
            if closing:
                break
        at = body.find(delimiter, at + len(delimiter))
    children = []
    for (_, start, closing), (end, _, _) in zip(lines, [*lines[1:], (len(body), 0, True)], strict=True):
        if closing:
            break
        children.append(body[start:end])
    return children


def _decoded_size(headers: EmailMessage, body: bytes) -> int:
    encoding = str(headers.get("Content-Transfer-Encoding", "")).strip().lower()
    if encoding == "base64":
        letters = len(body) - sum(body.count(space) for space in (b"\r", b"\n", b" ", b"\t"))
        return max(0, letters * 3 // 4 - body.rstrip().endswith(b"=") - body.rstrip().endswith(b"=="))
    return len(body)


def _preview(texts: list[tuple[EmailMessage, bytes]]) -> tuple[str, bool]:
    """The start of the first text/plain part (else the first text part), decoded."""
    plain = [text for text in texts if text[0].get_content_subtype() == "plain"]
    for headers, body in plain or texts:
        # Decode only what the preview can show (4 bytes a character at most).
        limit = PREVIEW_CHARS * 4
        decoded = _decode(headers, body[: limit * 2])
        charset = headers.get_content_charset() or "utf-8"
        try:
            text = decoded.decode(charset, "replace")
        except LookupError:
            text = decoded.decode("utf-8", "replace")
        return text[:PREVIEW_CHARS], len(text) > PREVIEW_CHARS or len(body) > limit * 2
    return "", False


def _decode(headers: EmailMessage, body: bytes) -> bytes:
    encoding = str(headers.get("Content-Transfer-Encoding", "")).strip().lower()
    if encoding == "base64":
        letters = b"".join(body.split())
        try:
            return base64.b64decode(letters[: len(letters) // 4 * 4])
        except binascii.Error:
            return body
    if encoding == "quoted-printable":
        return quopri.decodestring(body)
    return body


def _header_text(value: object) -> str:
    """A header as a person reads it: encoded words (RFC 2047) decoded."""
    try:
        return str(make_header(decode_header(str(value))))
    except (ValueError, LookupError, binascii.Error):
        return str(value)


def human_size(size: int) -> str:
    if size < 1024:
        return f"{size} bytes"
    if size < 1024 * 1024:
        return f"{size / 1024:.1f} KiB"
    return f"{size / 1024 / 1024:.1f} MiB"


def eml_filename(queue_id: str) -> str:
    return f"{queue_id}.eml"
