"""Header fix-ups that providers require and old apps forget; the body is never parsed.

Line endings are made CRLF here, once, as the mail arrives: everything downstream (the spool,
the provider's DATA, the Sent copy, a DSN quoting the header) relies on it and does not check.

The body is copied once, into the upstream bytes: a 10 MB mail must not cost 10 MB per step.
"""

from __future__ import annotations

import email.policy
import email.utils
import hashlib
import re
from dataclasses import dataclass
from typing import Protocol

from relay.model import STREAM_THRESHOLD as STREAM_THRESHOLD  # the rooms read it from here
from relay.model import User

CRLF = b"\r\n"
_ANY_NEWLINE = re.compile(rb"\r\n|\r|\n")
# A Message-ID relay keeps as the app wrote it: printable ASCII without spaces, one line, of a
# sane length. It goes into log lines (as one key=value), IMAP SEARCH for the Sent copy, the
# duplicate fingerprint and DSNs; anything else (control characters, U+2028, 8-bit, spaces
# that would let it pose as another log field) is replaced on arrival, never downstream.
MESSAGE_ID = re.compile(r"[\x21-\x7e]{1,250}")
_FIELD_NAMES = {"from": "From", "sender": "Sender"}
MAX_ADDRESS_FIELD = 998  # RFC 5322 §2.1.1: a line's limit; a longer From or Sender is refused
# The From forms apps write, in which both parsers below read the one same address: a dot-atom
# address, bare or in <>, after an optional name of plain words or a quoted string of them.
_DOT_ATOM_ADDRESS = r"[A-Za-z0-9_+-]+(?:\.[A-Za-z0-9_+-]+)*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
_PLAIN_MAILBOX = re.compile(
    rf"(?P<bare>{_DOT_ATOM_ADDRESS})"
    rf"|(?:[A-Za-z0-9 ._'-]*|\"[A-Za-z0-9 ._',-]*\")[ \t]*<(?P<angle>{_DOT_ATOM_ADDRESS})>"
)
# A plain address that every parser reads as itself (no quoting, comments or route).
DOT_ATOM_ADDRESS = re.compile(_DOT_ATOM_ADDRESS)


@dataclass(frozen=True, slots=True)
class PreparedMessage:
    """A message ready to go: the upstream bytes (Bcc removed) and the header block for Sent."""

    upstream: bytes  # what the provider receives; the body starts at body_offset
    body_offset: int
    sent_header: bytes
    message_id: str
    sender: str
    app_message_id: bool = True  # False when relay made the Message-ID up

    @property
    def upstream_header(self) -> bytes:
        """The header block the provider receives: Bcc removed."""
        return self.upstream[: self.body_offset]

    @property
    def body(self) -> bytes:
        """Everything after the header block, shared by both copies."""
        return self.upstream[self.body_offset :]

    @property
    def sent_copy(self) -> bytes:
        """What the user's Sent folder keeps: Bcc kept, as a mail client does."""
        return self.sent_header + self.body

    @property
    def size(self) -> int:
        """Bytes this message takes in the spool."""
        return len(self.upstream) + len(self.sent_header)


class SpooledData(Protocol):
    """Message data kept in the spool, not in memory: read back one piece at a time."""

    @property
    def size(self) -> int:
        """Octets in all."""
        ...

    @property
    def dot_lines(self) -> bool:
        """Whether a line may start with a dot (False: DATA sends it with no stuffing pass)."""
        ...

    async def read(self, offset: int, length: int) -> bytes:
        """Up to length octets from offset (fewer only at the end)."""
        ...


MessageData = bytes | SpooledData  # CRLF already (see prepare), whole or in the spool


def data_size(data: MessageData) -> int:
    """Octets of message data, wherever it is."""
    return len(data) if isinstance(data, bytes) else data.size


async def whole(data: MessageData) -> bytes:
    """The data as one bytes object (for what needs it whole, such as a DSN quoting it)."""
    if isinstance(data, bytes):
        return data
    pieces = [
        await data.read(start, STREAM_THRESHOLD) for start in range(0, data.size, STREAM_THRESHOLD)
    ]
    return b"".join(pieces)


def stuffed(piece: bytes, before: bytes) -> bytes:
    """A piece of CRLF data dot-stuffed for DATA; before: the (up to) 2 octets preceding it.

    RFC 5321 §4.5.2: a line that starts with a dot gets a second one. The data's start counts
    as a line start (before=CRLF); a CRLF split between two pieces is seen through before.
    """
    if before.endswith(CRLF) and piece.startswith(b"."):
        piece = b"." + piece
    elif before.endswith(b"\r") and piece.startswith(b"\n."):
        piece = b"\n.." + piece[2:]
    return piece.replace(b"\r\n.", b"\r\n..") if piece.rfind(b"\r\n.") >= 0 else piece


def end_of_data(last: bytes) -> bytes:
    """What ends DATA after data whose last octets are last: the final CRLF is the data's own."""
    return b".\r\n" if last.endswith(CRLF) else b"\r\n.\r\n"


def crlf_only(data: bytes | bytearray) -> bool:
    """Whether every CR and LF in data is part of a CRLF."""
    # CRs and LFs number twice the CRLFs exactly when none is bare; counting both by deleting
    # them is one pass, where counting each is two.
    return len(data) - len(data.translate(None, b"\r\n")) == 2 * data.count(CRLF)


def normalise_line_endings(data: bytes) -> bytes:
    """Turn bare CR and bare LF into CRLF (RFC 5322 §2.3 allows CRLF only); no copy if clean."""
    return data if crlf_only(data) else _ANY_NEWLINE.sub(CRLF, data)


def has_dot_line(data: bytes | bytearray) -> bool:
    """Whether a line of CRLF data starts with a dot (and so needs one more on the wire)."""
    # rfind: CPython's reverse search for a short needle is about twice as fast as find or in.
    return data.startswith(b".") or data.rfind(b"\r\n.") >= 0


def wire_pieces(data: bytes) -> list[bytes]:
    """DATA (CRLF already: see prepare) as it goes on the wire, CRLF.CRLF included, in pieces."""
    pieces = []
    # RFC 5321 §4.5.2: a line that starts with a dot gets a second one.
    if data.startswith(b"."):
        pieces.append(b".")
    if b"\r\n." in data:
        data = data.replace(b"\r\n.", b"\r\n..")
    pieces.append(data)
    pieces.append(b".\r\n" if data.endswith(CRLF) else b"\r\n.\r\n")
    return pieces


def header_end(data: bytes) -> int:
    """Where the header block of a CRLF message ends (after its last CRLF) and the body starts."""
    if data.startswith(CRLF):
        return 0
    end = data.find(b"\r\n\r\n")
    return len(data) if end < 0 else end + 2


def split_header(data: bytes) -> tuple[list[bytes], bytes]:
    """Split a CRLF message into header fields (folded lines kept together) and the rest."""
    end = header_end(data)
    return header_fields(data[:end]), data[end:]


def header_fields(header: bytes) -> list[bytes]:
    """A header block's fields, folded lines kept together."""
    fields: list[bytes] = []
    for line in header.split(CRLF)[:-1] if header.endswith(CRLF) else header.split(CRLF):
        if fields and line[:1] in (b" ", b"\t"):
            fields[-1] += CRLF + line
        else:
            fields.append(line)
    return fields


def field_name(field: bytes) -> str:
    """The lower-cased name of a header field."""
    return field.partition(b":")[0].strip().lower().decode("ascii", "replace")


def field_value(field: bytes) -> str:
    """The unfolded value of a header field."""
    value = field.split(b":", 1)[1] if b":" in field else b""
    return re.sub(rb"\r\n[ \t]", b" ", value).strip().decode("utf-8", "replace")


def prepare(
    raw: bytes, user: User, mail_from: str, now: float, *, local_names: bool = False
) -> PreparedMessage:
    """Apply relay's fix-ups: CRLF, Date, a usable Message-ID, Bcc, the optional From rewrite.

    local_names (mail whose user the connection fixed: `relay sendmail`, a one-user listener):
    a From or Sender address without a domain, as cron and sendmail write it, is the user's own.
    """
    data = normalise_line_endings(raw)
    end = header_end(data)
    fields = header_fields(bytes(data[:end]))
    if local_names:
        fields = qualified_senders(fields, user)
    # Each field's name, read once: prepare looks at every name four times.
    named = [(field_name(f), f) for f in fields]
    names = {name for name, _ in named}
    domain = user.email.rpartition("@")[2]
    if "date" not in names:
        named.append(("date", b"Date: " + email.utils.formatdate(now, localtime=True).encode()))
    message_ids = [field_value(f) for name, f in named if name == "message-id"]
    message_id = usable_message_id(message_ids[0], domain) if message_ids else None
    if message_id is None or len(message_ids) > 1 or message_id != message_ids[0]:
        # One Message-ID (RFC 5322 §3.6), and one relay can use everywhere (see MESSAGE_ID).
        message_id = message_id or email.utils.make_msgid(domain=domain)
        named = [(name, f) for name, f in named if name != "message-id"]
        named.append(("message-id", b"Message-ID: " + message_id.encode()))
    sender = mail_from
    if user.rewrite_from:
        sender = user.email
        mailbox = email.utils.formataddr((_one_line(user.display_name), user.email)).encode()
        named = [(name, _rewritten(name, f, mailbox)) for name, f in named]
        if "from" not in names:
            named.append(("from", b"From: " + mailbox))
    upstream_header = _join([f for name, f in named if name != "bcc"])
    return PreparedMessage(
        # The one copy of the body: memoryview slices copy nothing before the join.
        upstream=b"".join((upstream_header, memoryview(data)[end:])),
        body_offset=len(upstream_header),
        sent_header=_join([f for _, f in named]),
        message_id=message_id,
        sender=sender,
        app_message_id=bool(message_ids and message_ids[0]),
    )


def usable_message_id(value: str, domain: str) -> str | None:
    """The app's Message-ID if relay can use it as is, else one made from it; None if empty."""
    if not value:
        return None
    if MESSAGE_ID.fullmatch(value):
        return value
    # Made from the app's value, so an app that retries the same mail is still recognised
    # (queue.duplicate_window) although what it sent could not be kept.
    digest = hashlib.blake2b(value.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()
    return f"<{digest}.replaced@{domain}>"


def sender_fields(header: bytes) -> list[tuple[str, tuple[str, ...]]]:
    """Each From and Sender field of a header block with every address either parser finds."""
    found = []
    for field in header_fields(header):
        name = field_name(field)
        if name in ("from", "sender"):
            found.append((_FIELD_NAMES[name], mailbox_addresses(field_value(field))))
    return found


def mailbox_addresses(value: str) -> tuple[str, ...]:
    """The addresses in a From or Sender value as the lenient and the strict parser read it.

    A mail program could read an ambiguous value either way, so both readings count: an
    address only one parser sees is still an address the recipient may be shown. "" stands
    for what cannot be read at all.
    """
    if len(value) > MAX_ADDRESS_FIELD:
        return ("",)  # both parsers take time that grows fast with length, and recurse
    plain = _PLAIN_MAILBOX.fullmatch(value)
    if plain is not None:
        # The two parsers cost a quarter of a millisecond per mail (issue 19); in these forms
        # neither can read anything but this one address (tests/test_header_sender.py).
        return (plain["bare"] or plain["angle"],)
    return addresses_by_both_parsers(value)


def addresses_by_both_parsers(value: str) -> tuple[str, ...]:
    """The addresses that email.utils' lenient parser or email's strict one reads in value."""
    found = []
    try:
        found += [address for _, address in email.utils.getaddresses([value])]
    except Exception:  # e.g. RecursionError on nested comments: nothing readable
        found.append("")
    try:
        found += [a.addr_spec for a in email.policy.default.header_factory("from", value).addresses]
    except Exception:
        found.append("")
    return tuple(dict.fromkeys(found))


def _rewritten(name: str, field: bytes, mailbox: bytes) -> bytes:
    return _FIELD_NAMES[name].encode() + b": " + mailbox if name in ("from", "sender") else field


def _join(fields: list[bytes]) -> bytes:
    return b"".join(f + CRLF for f in fields)


def _one_line(text: str | None) -> str:
    # formataddr quotes an ASCII name but keeps a CR or LF in it, which would start a new
    # header field (RFC 5322 §2.2): the CLI refuses such names, and so does the last step.
    return " ".join("".join(c if c.isprintable() else " " for c in text or "").split())


def qualified_senders(fields: list[bytes], user: User) -> list[bytes]:
    """From and Sender with each address that has no domain made the user's; From if none."""
    if not any(field_name(f) == "from" for f in fields):
        # As sendmail does for a message without From (RFC 5322 §3.6 requires one).
        mailbox = (_one_line(user.display_name), user.email)
        return [*fields, b"From: " + email.utils.formataddr(mailbox).encode()]
    return [_qualified(f, user) if field_name(f) in ("from", "sender") else f for f in fields]


def _qualified(field: bytes, user: User) -> bytes:
    value = field_value(field)
    if len(value) > MAX_ADDRESS_FIELD:
        return field  # refused later as unreadable (header_sender_refusal)
    pairs = email.utils.getaddresses([value])
    if all("@" in address for _, address in pairs):
        return field
    # `root (Cron Daemon)`: the comment is the name a mail program shows, so it stays.
    mailboxes = [
        (name or _one_line(user.display_name), user.email if "@" not in address else address)
        for name, address in pairs
    ]
    shown = ", ".join(email.utils.formataddr(m) for m in dict.fromkeys(mailboxes))
    return _FIELD_NAMES[field_name(field)].encode() + b": " + shown.encode()
