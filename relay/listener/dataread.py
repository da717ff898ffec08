"""DATA read in pieces, not a line at a time: the end is CRLF.CRLF only, with aiosmtpd's limits.

aiosmtpd reads DATA one line at a time into a list of line objects and joins them: for a 10 MB
mail that is 134,000 awaits and line objects that take twice the mail's size in memory.
"""

from __future__ import annotations

import asyncio
import re
from enum import Enum

from relay.policy import SizeLimit, size_refusal
from relay.reply import LINE_TOO_LONG, LOCAL_ERROR, NO_DATA_MEMORY, TOO_MUCH_DATA, Reply

CRLF = b"\r\n"
END_LINE = b".\r\n"
END_OF_DATA = CRLF + END_LINE
# RFC 5321 §4.5.3.1.6: 1000 octets with CRLF, plus the transparency dot (aiosmtpd's limit).
LINE_LIMIT = 1001
_LINE_END = re.compile(rb"\r\n|\n|\r")


class DataProblem(Enum):
    """Why a DATA that has ended is refused, with the reply it gets (aiosmtpd's wording)."""

    TOO_LONG = LINE_TOO_LONG
    TOO_MUCH = TOO_MUCH_DATA
    NO_ROOM = NO_DATA_MEMORY


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
        # Lines are taken at any LF, so mail from apps that end lines with a bare LF (PHP, cron)
        # is read line by line like any other; only a CRLF starts a line that may end the data.
        cut = len(pending) - len(END_LINE) if ended else pending.rfind(b"\n") + 1
        if cut:
            self._take(pending[:cut], self._line_start)
            self._line_start = ended or (cut >= 2 and pending[cut - 2 : cut] == CRLF)
            del pending[:cut]
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

    def refusal(self, limit: SizeLimit | None) -> Reply:
        """The reply to a DATA that ended with a problem: a mail too big names the limit."""
        if self.problem is DataProblem.TOO_MUCH and limit is not None:
            refused = size_refusal(self.size, limit)
            if refused is not None:
                return refused.reply
        return LOCAL_ERROR if self.problem is None else self.problem.value

    def content(self) -> bytes:
        """The content collected, handed over once (the reader keeps no reference)."""
        content, self._pieces = b"".join(self._pieces), []
        return content

    def release(self) -> None:
        """Give the octets held back to the budget (the content is no longer needed)."""
        self._budget.give_back(self._reserved)
        self._reserved = 0

    def _take(self, lines: bytearray, at_line_start: bool) -> None:
        """Keep complete lines, each ending in CRLF or a bare LF; at_line_start: after a CRLF."""
        self.size += len(lines)
        if self._size_limit and self.size > self._size_limit:
            self.refuse(DataProblem.TOO_MUCH)
        if self.problem is not None:
            return
        # RFC 5321 §4.5.3.1.6 counts a line with its CRLF: a line that ends otherwise (bare LF,
        # bare CR) counts as it will once relay has made that ending a CRLF.
        if max(map(len, _LINE_END.split(lines))) + len(CRLF) > LINE_LIMIT:
            self.refuse(DataProblem.TOO_LONG)
            return
        if not self._budget.take(len(lines)):
            # RFC 5321 §4.5.3.1.10: out of room is temporary; the app retries later.
            self.refuse(DataProblem.NO_ROOM)
            return
        self._reserved += len(lines)
        # RFC 5321 §4.5.2: a line starting with a dot had one more dot added by the client.
        if at_line_start and lines.startswith(b"."):
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
