"""SMTP replies taken from the bytes a server sent, however TCP cut them (RFC 5321 §4.2)."""

from __future__ import annotations

from collections import deque

import aiosmtplib

# aiosmtplib's bounds, so a pipelined reply is held to what its own reader allows.
MAX_LINE = 8192
MAX_REPLY = MAX_LINE * 4
INVALID_RESPONSE = aiosmtplib.SMTPStatus.invalid_response.value


class ReplyParser:
    """Bytes in, whole replies out: every reply in what arrived, multi-line ones joined."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._lines: list[bytes] = []  # the lines so far of a multi-line reply (RFC 5321 §4.2.1)
        self._code = 0
        self._replies: deque[aiosmtplib.SMTPResponse] = deque()
        self._held = 0  # bytes of the reply being read: bounded as aiosmtplib bounds it

    def feed(self, data: bytes) -> None:
        """Take bytes as they arrived; raise SMTPResponseException for a malformed reply."""
        self._buffer += data
        start = 0
        while (end := self._buffer.find(b"\n", start)) >= 0:
            self._take_line(bytes(self._buffer[start : end + 1]))
            start = end + 1
        del self._buffer[:start]
        if len(self._buffer) > MAX_LINE or self._held + len(self._buffer) > MAX_REPLY:
            raise aiosmtplib.SMTPResponseException(INVALID_RESPONSE, "Response too long")

    def next_reply(self) -> aiosmtplib.SMTPResponse | None:
        """The oldest whole reply not yet taken, or None until one has arrived."""
        return self._replies.popleft() if self._replies else None

    def _take_line(self, line: bytes) -> None:
        if len(line) > MAX_LINE:
            raise aiosmtplib.SMTPResponseException(INVALID_RESPONSE, "Response too long")
        code = _code(line)
        # RFC 5321 §4.2.1: every line of a multi-line reply carries the same code.
        if self._lines and code != self._code:
            raise _malformed(line)
        self._code = code
        self._lines.append(line[4:].strip(b" \t\r\n"))
        self._held += len(line)
        if line[3:4] == b"-":
            if self._held > MAX_REPLY:
                raise aiosmtplib.SMTPResponseException(INVALID_RESPONSE, "Response too long")
            return
        # Joined as aiosmtplib joins them, so a reply reads the same on either path.
        message = b"\n".join(self._lines).decode("utf-8", "surrogateescape")
        self._replies.append(aiosmtplib.SMTPResponse(code, message))
        self._lines, self._held = [], 0


def _code(line: bytes) -> int:
    digits = line[:3]
    if len(digits) != 3 or not digits.isdigit() or line[3:4] not in (b" ", b"-", b"\r", b"\n"):
        raise _malformed(line)
    return int(digits)


def _malformed(line: bytes) -> aiosmtplib.SMTPResponseException:
    text = line.decode("utf-8", errors="ignore")
    return aiosmtplib.SMTPResponseException(
        INVALID_RESPONSE, f"Malformed SMTP response line: {text}"
    )
