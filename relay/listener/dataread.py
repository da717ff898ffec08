"""DATA read in pieces, not a line at a time: the end is CRLF.CRLF only, with aiosmtpd's limits.

aiosmtpd reads DATA one line at a time into a list of line objects and joins them: for a 10 MB
mail that is 134,000 awaits and line objects that take twice the mail's size in memory.
"""

from __future__ import annotations

import asyncio
from enum import Enum

CRLF = b"\r\n"
END_LINE = b".\r\n"
END_OF_DATA = CRLF + END_LINE
# RFC 5321 §4.5.3.1.6: 1000 octets with CRLF, plus the transparency dot (aiosmtpd's limit).
LINE_LIMIT = 1001


class DataProblem(Enum):
    """Why a DATA that has ended is refused, with the reply it gets (aiosmtpd's wording)."""

    TOO_LONG = "500 Line too long (see RFC5321 4.5.3.1.6)"
    TOO_MUCH = "552 Error: Too much mail data"
    NO_ROOM = "452 4.3.1 insufficient system resources for more mail data, try again later"


class DataBudget:
    """Octets of DATA that all sessions together may hold in memory at once."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def take(self, size: int) -> bool:
        """Reserve size octets; False (and nothing reserved) if that would pass the limit."""
        if self.held + size > self.limit:
            return False
        self.held += size
        return True

    def give_back(self, size: int) -> None:
        """Release octets reserved earlier."""
        self.held -= size


class DataReader:
    """Collects one DATA's content, dot-unstuffed, from raw pieces, and sees its end line."""

    def __init__(self, size_limit: int | None, budget: DataBudget) -> None:
        self.problem: DataProblem | None = None
        self.size = 0  # octets of content on the wire, counted as aiosmtpd counts them
        self._size_limit = size_limit
        self._budget = budget
        self._reserved = 0
        self._pieces: list[bytes | bytearray] = []  # the content so far
        self._pending = bytearray()  # the line being received
        self._line_start = True  # whether _pending starts where a line starts

    def feed(self, piece: bytes) -> bool:
        """Take the next raw piece; True once the end-of-data line has come."""
        pending = self._pending
        pending += piece
        # RFC 5321 §4.1.1.4: only CRLF "." CRLF ends the data; a bare CR or LF never does.
        ended = pending.endswith(END_OF_DATA) or (self._line_start and pending == END_LINE)
        if ended:
            cut = len(pending) - len(END_LINE)
        else:
            last = pending.rfind(CRLF)
            cut = last + len(CRLF) if last >= 0 else 0
        if cut:
            self._take(pending[:cut])
            del pending[:cut]
            self._line_start = True
        if ended:
            pending.clear()
            return True
        if len(pending) > LINE_LIMIT:
            self.refuse(DataProblem.TOO_LONG)
            # Two octets are enough to see a CRLF that the next piece completes.
            del pending[:-2]
            self._line_start = False
        return False

    def refuse(self, problem: DataProblem) -> None:
        """Keep reading to the end, but store nothing more and answer with problem's reply."""
        if self.problem is None:
            self.problem = problem
        self._pieces = []
        self.release()

    def content(self) -> bytes:
        """The content collected, handed over once (the reader keeps no reference)."""
        content, self._pieces = b"".join(self._pieces), []
        return content

    def release(self) -> None:
        """Give the octets held back to the budget (the content is no longer needed)."""
        self._budget.give_back(self._reserved)
        self._reserved = 0

    def _take(self, lines: bytearray) -> None:
        """Keep complete lines, each ending in CRLF, that start where a line starts."""
        self.size += len(lines)
        if self._size_limit and self.size > self._size_limit:
            self.refuse(DataProblem.TOO_MUCH)
        if self.problem is not None:
            return
        if max(map(len, lines.split(CRLF))) + len(CRLF) > LINE_LIMIT:
            self.refuse(DataProblem.TOO_LONG)
            return
        if not self._budget.take(len(lines)):
            # RFC 5321 §4.5.3.1.10: out of room is temporary; the app retries later.
            self.refuse(DataProblem.NO_ROOM)
            return
        self._reserved += len(lines)
        # RFC 5321 §4.5.2: a line starting with a dot had one more dot added by the client.
        if lines.startswith(b"."):
            del lines[0]
        if b"\r\n." in lines:
            lines = lines.replace(b"\r\n.", CRLF)
        self._pieces.append(lines)


async def read_data(stream: asyncio.StreamReader, reader: DataReader) -> None:
    """Feed reader from stream until the end-of-data line, leaving what follows in stream."""
    while True:
        try:
            piece = await stream.readuntil(END_LINE)
        except asyncio.LimitOverrunError as overrun:
            # No end line starts in the first `consumed` octets: take them as they are.
            piece = await stream.read(overrun.consumed)
        if reader.feed(piece):
            return
