"""Header fix-ups that providers require and old apps forget; the body is never parsed.

Line endings are made CRLF here, once, as the mail arrives: everything downstream (the spool,
the provider's DATA, the Sent copy, a DSN quoting the header) relies on it and does not check.

The body is copied once, into the upstream bytes: a 10 MB mail must not cost 10 MB per step.
"""

from __future__ import annotations

import email.utils
import re
from dataclasses import dataclass

from relay.model import User

CRLF = b"\r\n"
_ANY_NEWLINE = re.compile(rb"\r\n|\r|\n")


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


def normalise_line_endings(data: bytes) -> bytes:
    """Turn bare CR and bare LF into CRLF (RFC 5322 §2.3 allows CRLF only); no copy if clean."""
    crlf = data.count(CRLF)
    if data.count(b"\r") == crlf and data.count(b"\n") == crlf:
        return data
    return _ANY_NEWLINE.sub(CRLF, data)


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
    return field.split(b":", 1)[0].strip().decode("ascii", "replace").lower()


def field_value(field: bytes) -> str:
    """The unfolded value of a header field."""
    value = field.split(b":", 1)[1] if b":" in field else b""
    return re.sub(rb"\r\n[ \t]", b" ", value).strip().decode("utf-8", "replace")


def prepare(raw: bytes, user: User, mail_from: str, now: float) -> PreparedMessage:
    """Apply relay's fix-ups: CRLF, Date, Message-ID, Bcc, and the optional From rewrite."""
    data = normalise_line_endings(raw)
    end = header_end(data)
    fields = header_fields(bytes(data[:end]))
    names = [field_name(f) for f in fields]
    domain = user.email.rpartition("@")[2]
    if "date" not in names:
        fields.append(b"Date: " + email.utils.formatdate(now, localtime=True).encode())
    message_ids = [field_value(f) for f in fields if field_name(f) == "message-id"]
    message_id = message_ids[0] if message_ids else email.utils.make_msgid(domain=domain)
    if not message_ids:
        fields.append(b"Message-ID: " + message_id.encode())
    sender = mail_from
    if user.rewrite_from:
        sender = user.email
        from_field = (
            b"From: " + email.utils.formataddr((_one_line(user.display_name), user.email)).encode()
        )
        fields = [from_field if field_name(f) == "from" else f for f in fields]
        if "from" not in names:
            fields.append(from_field)
    upstream_header = _join([f for f in fields if field_name(f) != "bcc"])
    return PreparedMessage(
        # The one copy of the body: memoryview slices copy nothing before the join.
        upstream=b"".join((upstream_header, memoryview(data)[end:])),
        body_offset=len(upstream_header),
        sent_header=_join(fields),
        message_id=message_id,
        sender=sender,
        app_message_id=bool(message_ids),
    )


def _join(fields: list[bytes]) -> bytes:
    return b"".join(f + CRLF for f in fields)


def _one_line(text: str | None) -> str:
    # formataddr quotes an ASCII name but keeps a CR or LF in it, which would start a new
    # header field (RFC 5322 §2.2): the CLI refuses such names, and so does the last step.
    return " ".join("".join(c if c.isprintable() else " " for c in text or "").split())
