"""DATA read in pieces, not a line at a time: the end is CRLF.CRLF only, with aiosmtpd's limits.

aiosmtpd reads DATA one line at a time into a list of line objects and joins them: for a 10 MB
mail that is 134,000 awaits and line objects that take twice the mail's size in memory.

A mail is held in memory (within the DataBudget) until it passes STREAM_THRESHOLD with its header
complete; from there its body goes to a staged file as it arrives (relay.queue.staging), and
only the header stays in memory for relay's fix-ups (relay.message.prepare).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from enum import Enum

from aiosmtpd.smtp import Envelope

from relay.errors import RelayError, StoreError
from relay.listener.params import RelayEnvelope
from relay.message import STREAM_THRESHOLD, crlf_only, header_end, normalise_line_endings
from relay.policy import SizeLimit, size_refusal
from relay.queue.staging import StagedBody
from relay.reply import LINE_TOO_LONG, LOCAL_ERROR, NO_DATA_MEMORY, TOO_MUCH_DATA, Reply

logger = logging.getLogger(__name__)

CRLF = b"\r\n"
END_LINE = b".\r\n"
END_OF_DATA = CRLF + END_LINE
# RFC 5321 §4.5.3.1.6: 1000 octets with CRLF, plus the transparency dot (aiosmtpd's limit).
LINE_LIMIT = 1001
_LINE_END = re.compile(rb"\r\n|\n|\r")
STAGE_WRITE = 256 * 1024  # a streamed body goes to its staged file in pieces of about this size
BLANK_LINE = CRLF + CRLF


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
    """Collects one DATA's content, dot-unstuffed, from raw pieces, and sees its end line.

    Once streamed, the content held is the header made CRLF, and the body (made CRLF a piece
    at a time: each piece ends at a line feed, so no CRLF is split) goes to the staged file.
    """

    def __init__(
        self,
        size_limit: int | None,
        budget: DataBudget,
        stage: Callable[[], StagedBody] | None = None,
    ) -> None:
        self.problem: DataProblem | None = None
        self.size = 0  # octets of content on the wire, counted as aiosmtpd counts them
        self._size_limit = size_limit
        self._budget = budget
        self._reserved = 0
        self._pieces: list[bytes | bytearray] = []  # the content so far
        self._pending = bytearray()  # the line being received
        self._line_start = True  # whether _pending starts where a line starts
        self._header_ended = False  # whether an empty line has come
        self._tail = b""  # the last octets of the content so far, made CRLF
        self._stage = stage  # makes a staged body for a mail past STREAM_THRESHOLD
        self.staged: StagedBody | None = None  # the body, once streamed; _pieces: the header
        self._unwritten = bytearray()  # body octets for staged, not yet written
        self.dot_lines = False  # whether any line of the content may start with a dot

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
        self._unwritten = bytearray()
        self.release()

    def refusal(self, limit: SizeLimit | None) -> Reply:
        """The reply to a DATA that ended with a problem: a mail too big names the limit."""
        if self.problem is DataProblem.TOO_MUCH and limit is not None:
            refused = size_refusal(self.size, limit)
            if refused is not None:
                return refused.reply
        return LOCAL_ERROR if self.problem is None else self.problem.value

    def content(self) -> bytes:
        """The content collected (the header only, once streamed), handed over once."""
        content, self._pieces = b"".join(self._pieces), []
        return content

    def fill(self, envelope: Envelope) -> None:
        """Hand the content to the envelope, with the staged body of a streamed mail."""
        envelope.content = envelope.original_content = self.content()
        if isinstance(envelope, RelayEnvelope):
            envelope.staged = self.staged
            if self.staged is not None:
                self.staged.dot_lines = self.dot_lines
        elif self.staged is not None:
            raise RelayError("a streamed body needs relay's envelope")  # the header alone: never

    @property
    def unwritten(self) -> int:
        """Octets of streamed body waiting to be written."""
        return len(self._unwritten)

    async def flush(self) -> None:
        """Write the streamed body received so far to the staged file."""
        if self.staged is not None and self._unwritten and self.problem is None:
            piece, self._unwritten = self._unwritten, bytearray()
            await self.staged.write(piece)

    def release(self) -> None:
        """Give the octets held back to the budget, and drop a staged body the spool has not."""
        self._budget.give_back(self._reserved)
        self._reserved = 0
        if self.staged is not None:
            self.staged.discard()

    def _take(self, lines: bytearray, at_line_start: bool) -> None:
        """Keep complete lines, each ending in CRLF or a bare LF; at_line_start: after a CRLF."""
        self.size += len(lines)
        if self._size_limit and self.size > self._size_limit:
            self.refuse(DataProblem.TOO_MUCH)
        if self.problem is not None:
            return
        clean = crlf_only(lines)
        if _longest_line_over_limit(lines, clean):
            self.refuse(DataProblem.TOO_LONG)
            return
        # RFC 5321 §4.5.2: a line starting with a dot had one more dot added by the client.
        if at_line_start and lines.startswith(b"."):
            del lines[0]
            self.dot_lines = True
        if lines.rfind(b"\r\n.") >= 0:  # rfind: twice as fast as `in` for this needle
            lines = lines.replace(b"\r\n.", CRLF)
            self.dot_lines = True
        # A bare LF made CRLF may come before a dot (RFC 5321 stuffs only after CRLF).
        self.dot_lines |= not clean
        if self.staged is not None:
            self._unwritten += lines if clean else normalise_line_endings(bytes(lines))
            return
        if not self._budget.take(len(lines)):
            # RFC 5321 §4.5.3.1.10: out of room is temporary; the app retries later.
            self.refuse(DataProblem.NO_ROOM)
            return
        self._reserved += len(lines)
        self._see_header_end(lines)
        self._pieces.append(lines)
        if self._reserved > STREAM_THRESHOLD and self._header_ended:
            self._start_streaming()

    def _see_header_end(self, lines: bytearray) -> None:
        """Note whether the header block has ended (an empty line, as relay.message reads it)."""
        if self._header_ended:
            return
        # Made CRLF as relay.message.prepare will (no copy when it is CRLF already).
        piece = normalise_line_endings(bytes(lines))
        self._header_ended = (self._tail + piece).find(BLANK_LINE) >= 0 or (
            not self._reserved - len(lines) and piece.startswith(CRLF)
        )
        self._tail = piece[-3:]

    def _start_streaming(self) -> None:
        """Past the threshold: keep the header in memory, and send the body to a staged file."""
        if self._stage is None:
            return
        try:
            self.staged = self._stage()
        except StoreError as error:
            logger.warning("data.staging_failed error=%s (held in memory instead)", error)
            self._stage = None
            return
        content = normalise_line_endings(b"".join(self._pieces))
        head_end = header_end(content)
        self._pieces = [content[:head_end]]
        self._unwritten = bytearray(content[head_end:])
        # Only the header counts against the budget from now on.
        self._budget.give_back(self._reserved - head_end)
        self._reserved = head_end


def _longest_line_over_limit(lines: bytearray, clean: bool) -> bool:
    """Whether a line passes LINE_LIMIT octets with its CRLF (RFC 5321 §4.5.3.1.6).

    clean: every line ends in CRLF (each CR and LF is part of one).
    """
    if not clean:
        # A line that ends otherwise (bare LF, bare CR) counts as it will once relay has made
        # that ending a CRLF.
        return max(map(len, _LINE_END.split(lines))) + len(CRLF) > LINE_LIMIT
    # CRLF only: from each line start, the window of LINE_LIMIT octets must hold a line feed;
    # the window's last one starts the next window. A few steps per kilobyte, not one per line.
    start, end = 0, len(lines)
    while start < end:
        feed = lines.rfind(b"\n", start, start + LINE_LIMIT)
        if feed < 0:
            return True
        start = feed + 1
    return False


async def read_data(stream: asyncio.StreamReader, reader: DataReader) -> None:
    """Feed reader from stream until the end-of-data line, leaving what follows in stream."""
    while True:
        try:
            piece = await stream.readuntil(END_LINE)
        except asyncio.LimitOverrunError as overrun:
            # No end line starts in the first `consumed` octets: take them as they are.
            piece = await stream.read(overrun.consumed)
        if reader.feed(piece):
            await reader.flush()
            return
        if reader.unwritten >= STAGE_WRITE:
            await reader.flush()  # before reading on: the staged file paces the client
