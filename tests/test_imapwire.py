"""What IMAP puts on the wire: mailbox names, LIST replies, and how failures are retried."""

from __future__ import annotations

import imaplib

import pytest

from relay.errors import SentCopyRetry
from relay.sent.imapwire import (
    decode_mailbox,
    encode_mailbox,
    error_reply,
    parse_list,
    quoted,
    response_code,
    retry_advice,
)

SOON, AFTER_FIX, NEVER = SentCopyRetry.SOON, SentCopyRetry.AFTER_FIX, SentCopyRetry.NEVER


@pytest.mark.parametrize(
    ("name", "wire"),
    [
        ("Sent", "Sent"),
        ("Envoyés", "Envoy&AOk-s"),
        ("Éléments envoyés", "&AMk-l&AOk-ments envoy&AOk-s"),
        ("~peter/mail/台北/日本語", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"),  # RFC 3501 §5.1.3
        ("R&D", "R&-D"),
    ],
)
def test_mailbox_names_round_trip_through_modified_utf7(name: str, wire: str) -> None:
    assert encode_mailbox(name) == wire
    assert decode_mailbox(wire) == name


@pytest.mark.parametrize("wire", ["R&D", "&AOk", "caf\u00e9", "&A*k-"])
def test_invalid_modified_utf7_is_refused(wire: str) -> None:
    with pytest.raises(ValueError):
        decode_mailbox(wire)


def test_quoted_strings_escape_and_refuse_line_breaks() -> None:
    assert quoted('a "b" \\c') == '"a \\"b\\" \\\\c"'
    with pytest.raises(ValueError):
        quoted("Sent\r\nA1 DELETE INBOX")


def test_list_replies_in_every_shape_give_names_flags_and_wire_names() -> None:
    data = [
        b'(\\HasNoChildren \\Sent) "/" "Sent Items"',
        b"(\\HasNoChildren) NIL INBOX",
        (b'(\\Noselect) "." {11}', b"Envoy&AOk-s"),
        b"",  # what follows a literal on its line
        b'() "." "Say \\"hi\\"" ("CHILDINFO" ("SUBSCRIBED"))',
        None,
    ]
    boxes = parse_list(data)
    assert [(box.name, box.wire) for box in boxes] == [
        ("Sent Items", "Sent Items"),
        ("INBOX", "INBOX"),
        ("Envoyés", "Envoy&AOk-s"),
        ('Say "hi"', 'Say "hi"'),
    ]
    assert boxes[0].flags == {"\\hasnochildren", "\\sent"}
    assert not boxes[2].selectable and boxes[0].selectable


def test_response_code_is_read_from_the_start_of_a_reply() -> None:
    assert response_code("[TRYCREATE] Mailbox doesn't exist: Sent") == "TRYCREATE"
    assert response_code("[overquota] Quota exceeded") == "OVERQUOTA"
    assert response_code("Mailbox is full [OVERQUOTA]") is None


@pytest.mark.parametrize(
    ("step", "status", "code", "advice"),
    [
        ("login", "NO", "AUTHENTICATIONFAILED", AFTER_FIX),
        ("login", "NO", None, AFTER_FIX),
        ("login", "NO", "UNAVAILABLE", SOON),
        ("append", "NO", "OVERQUOTA", SOON),
        ("append", "NO", "INUSE", SOON),
        ("append", "NO", "TOOBIG", NEVER),
        ("append", "BAD", None, NEVER),
        ("append", "NO", "TRYCREATE", AFTER_FIX),
        ("append", "NO", None, SOON),
        ("create", "NO", "NOPERM", AFTER_FIX),
        ("create", "NO", None, AFTER_FIX),
        ("list", "BAD", None, AFTER_FIX),
    ],
)
def test_failures_are_retried_as_a_mature_client_would(
    step: str, status: str, code: str | None, advice: SentCopyRetry
) -> None:
    assert retry_advice(step, status, code) is advice


def test_imaplibs_wording_of_a_bad_reply_gives_back_the_servers_words() -> None:
    error = imaplib.IMAP4.error("APPEND command error: BAD [b'Error in IMAP command: Bad date']")
    assert error_reply(error) == ("BAD", "Error in IMAP command: Bad date")
    assert error_reply(imaplib.IMAP4.error(b"[AUTHENTICATIONFAILED] No.")) == (
        "NO",
        "[AUTHENTICATIONFAILED] No.",
    )
