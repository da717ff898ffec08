"""Pure policy decisions and the exact replies they produce."""

from __future__ import annotations

from dataclasses import replace

from relay.model import User
from relay.policy import (
    effective_recipient_limit,
    login_refusal,
    recipient_count_refusal,
    sender_refusal,
)

ALICE = User(
    login="alice",
    provider="agency",
    email="Alice@Example.org",
    upstream_user="alice@example.org",
    local_hash="sha256$x",
    sealed_secret=None,
    aliases=("sales@example.org",),
)


def test_own_address_and_alias_are_allowed_senders_in_any_case() -> None:
    assert sender_refusal("alice@example.org", ALICE) is None
    assert sender_refusal("SALES@example.org", ALICE) is None


def test_foreign_sender_gets_553_listing_allowed_addresses() -> None:
    refusal = sender_refusal("ceo@example.org", ALICE)
    assert refusal is not None
    assert refusal.reply.line.startswith("553 5.7.1 ")
    assert "alice@example.org" in refusal.reply.line and "sales@example.org" in refusal.reply.line


def test_rewrite_from_allows_any_sender() -> None:
    assert sender_refusal("noreply@shop.example", replace(ALICE, rewrite_from=True)) is None


def test_recipient_over_limit_gets_452() -> None:
    assert recipient_count_refusal(1, 2) is None
    refusal = recipient_count_refusal(2, 2)
    assert refusal is not None and refusal.reply.line.startswith("452 4.5.3 ")


def test_disabled_unknown_and_wrong_secret_logins_get_the_same_535() -> None:
    replies = {
        refusal.reply.line
        for refusal in (
            login_refusal(None, secret_ok=False),
            login_refusal(ALICE, secret_ok=False),
            login_refusal(replace(ALICE, enabled=False), secret_ok=True),
        )
        if refusal is not None
    }
    assert len(replies) == 1 and next(iter(replies)).startswith("535 5.7.8 ")
    assert login_refusal(ALICE, secret_ok=True) is None


def test_provider_recipient_limit_applies_when_lower() -> None:
    assert effective_recipient_limit(100, 50) == 50
    assert effective_recipient_limit(100, None) == 100
    assert effective_recipient_limit(10, 500) == 10


GMAIL_USER = replace(ALICE, email="first.last@gmail.com", aliases=())


def test_gmail_sender_matches_ignoring_dots_plus_tags_case_and_googlemail() -> None:
    for sender in (
        "firstlast@gmail.com",
        "First.Last+crm@gmail.com",
        "f.i.r.s.t.l.a.s.t@googlemail.com",
    ):
        assert sender_refusal(sender, GMAIL_USER, "gmail") is None, sender


def test_gmail_rules_apply_only_to_the_gmail_preset_and_gmail_domains() -> None:
    assert sender_refusal("firstlast@gmail.com", GMAIL_USER, None) is not None
    assert sender_refusal("firstlast@gmail.com", GMAIL_USER, "google-workspace") is not None
    workspace = replace(ALICE, email="first.last@example.org", aliases=())
    # Workspace domains keep their dots (PROVIDERS.md §3 [9]).
    assert sender_refusal("firstlast@example.org", workspace, "gmail") is not None
    assert sender_refusal("otherlast@gmail.com", GMAIL_USER, "gmail") is not None
