"""Header fix-ups that providers require and old apps forget; the body is never parsed."""

from __future__ import annotations

import email.utils
import re
from dataclasses import dataclass

from relay.store import User

CRLF = b"\r\n"
_ANY_NEWLINE = re.compile(rb"\r\n|\r|\n")


@dataclass(frozen=True, slots=True)
class PreparedMessage:
    """A message ready to go: one shared body, a header block for upstream and one for Sent."""

    upstream_header: bytes
    sent_header: bytes
    body: bytes
    message_id: str
    sender: str
    app_message_id: bool = True  # False when relay made the Message-ID up

    @property
    def upstream(self) -> bytes:
        """What the provider receives: Bcc removed."""
        return self.upstream_header + self.body

    @property
    def sent_copy(self) -> bytes:
        """What the user's Sent folder keeps: Bcc kept, as a mail client does."""
        return self.sent_header + self.body


def normalise_line_endings(data: bytes) -> bytes:
    """Turn bare CR and bare LF into CRLF (RFC 5322 §2.3 allows CRLF only)."""
    crlf = data.count(CRLF)
    if data.count(b"\r") == crlf and data.count(b"\n") == crlf:
        return data
    return _ANY_NEWLINE.sub(CRLF, data)


def split_header(data: bytes) -> tuple[list[bytes], bytes]:
    """Split a CRLF message into header fields (folded lines kept together) and the rest."""
    if data.startswith(CRLF):
        return [], data
    end = data.find(b"\r\n\r\n")
    header, rest = (data, b"") if end < 0 else (data[: end + 2], data[end + 2 :])
    fields: list[bytes] = []
    for line in header.split(CRLF)[:-1] if header.endswith(CRLF) else header.split(CRLF):
        if fields and line[:1] in (b" ", b"\t"):
            fields[-1] += CRLF + line
        else:
            fields.append(line)
    return fields, rest


def field_name(field: bytes) -> str:
    """The lower-cased name of a header field."""
    return field.split(b":", 1)[0].strip().decode("ascii", "replace").lower()


def field_value(field: bytes) -> str:
    """The unfolded value of a header field."""
    value = field.split(b":", 1)[1] if b":" in field else b""
    return re.sub(rb"\r\n[ \t]", b" ", value).strip().decode("utf-8", "replace")


def prepare(raw: bytes, user: User, mail_from: str, now: float) -> PreparedMessage:
    """Apply relay's fix-ups: CRLF, Date, Message-ID, Bcc, and the optional From rewrite."""
    fields, body = split_header(normalise_line_endings(raw))
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
    upstream_fields = [f for f in fields if field_name(f) != "bcc"]
    return PreparedMessage(
        upstream_header=_join(upstream_fields),
        sent_header=_join(fields),
        body=body,
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
