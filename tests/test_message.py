"""Message fix-ups: what the provider and the Sent folder receive."""

from __future__ import annotations

import email
import email.policy
from dataclasses import replace

from relay.message import prepare
from relay.model import User

ALICE = User(
    login="alice",
    provider="agency",
    email="alice@example.org",
    upstream_user="alice@example.org",
    local_hash="sha256$x",
    sealed_secret=None,
    display_name="Alice Example",
)
NOW = 1_790_000_000.0


def headers(data: bytes) -> email.message.EmailMessage:
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(parsed, email.message.EmailMessage)
    return parsed


def test_missing_date_and_message_id_are_added() -> None:
    prepared = prepare(b"Subject: hi\r\n\r\nbody\r\n", ALICE, "alice@example.org", NOW)
    parsed = headers(prepared.upstream)
    assert parsed["Date"] is not None
    assert parsed["Message-ID"] == prepared.message_id
    assert prepared.message_id.endswith("@example.org>")
    assert prepared.upstream.endswith(b"\r\n\r\nbody\r\n")


def test_existing_message_id_and_date_are_kept() -> None:
    raw = b"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <abc@app>\r\n\r\nx\r\n"
    prepared = prepare(raw, ALICE, "alice@example.org", NOW)
    assert prepared.upstream == raw
    assert prepared.message_id == "<abc@app>"


def test_bcc_is_stripped_upstream_and_kept_for_sent_copy() -> None:
    raw = b"To: a@x.org\r\nBcc: secret@x.org,\r\n  other@x.org\r\nSubject: s\r\n\r\nbody\r\n"
    prepared = prepare(raw, ALICE, "alice@example.org", NOW)
    assert b"secret@x.org" not in prepared.upstream
    assert b"other@x.org" not in prepared.upstream
    assert headers(prepared.sent_copy)["Bcc"] == "secret@x.org, other@x.org"
    assert headers(prepared.upstream)["Subject"] == "s"


def test_bare_line_feeds_become_crlf() -> None:
    prepared = prepare(b"Subject: s\n\nline one\nline two\n", ALICE, "alice@example.org", NOW)
    assert b"\r\n\r\nline one\r\nline two\r\n" in prepared.upstream
    assert prepared.upstream.count(b"\n") == prepared.upstream.count(b"\r\n")


def test_rewrite_from_sets_user_address_with_display_name() -> None:
    user = replace(ALICE, rewrite_from=True)
    raw = b"From: Shop <noreply@shop.example>\r\nSubject: s\r\n\r\nb\r\n"
    prepared = prepare(raw, user, "noreply@shop.example", NOW)
    assert headers(prepared.upstream)["From"] == "Alice Example <alice@example.org>"
    assert prepared.sender == "alice@example.org"
    assert b"noreply@shop.example" not in prepared.upstream


def test_without_rewrite_from_the_envelope_sender_is_unchanged() -> None:
    prepared = prepare(b"From: a@example.org\r\n\r\nb\r\n", ALICE, "alice@example.org", NOW)
    assert prepared.sender == "alice@example.org"
    assert headers(prepared.upstream)["From"] == "a@example.org"
