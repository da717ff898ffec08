"""The hints table: which reply gets which fix, and how the hint reaches the app's reply."""

from __future__ import annotations

import pytest

from relay.errors import PermanentFailure
from relay.providers.hintrule import HintRule
from relay.providers.hints import RULES, find_rule, hint_for, preset_for_host
from relay.reply import REPLY_LINE_BYTES
from relay.upstream.replies import auth_error, reply_error, upstream_error

BY_KEY = {rule.key: rule for rule in RULES}


def preset_of(rule: HintRule) -> str | None:
    """A preset the rule is for; None (an explicit provider) for a rule for any server."""
    return rule.providers[0] if rule.providers else None


def test_rule_keys_are_unique_and_every_rule_cites_a_source() -> None:
    assert len(BY_KEY) == len(RULES)
    for rule in RULES:
        assert rule.hint.source.startswith(("https://", "http://")), rule.key
        assert rule.hint.text and "\n" not in rule.hint.text, rule.key


@pytest.mark.parametrize("rule", RULES, ids=[rule.key for rule in RULES])
def test_each_rules_own_reply_gets_its_hint(rule: HintRule) -> None:
    assert find_rule(preset_of(rule), rule.example) is rule
    assert hint_for(preset_of(rule), rule.example) == rule.hint


def test_the_three_microsoft_5_7_139_replies_get_three_different_fixes() -> None:
    keys = [
        "microsoft-smtp-auth-disabled-tenant",
        "microsoft-security-defaults",
        "microsoft-mailbox-smtp-auth",
    ]
    hints = {hint_for("office365", BY_KEY[key].example) for key in keys}
    assert len(hints) == 3
    assert "Set-TransportConfig" in BY_KEY[keys[0]].hint.text
    assert "security defaults" in BY_KEY[keys[1]].hint.text
    assert "Set-CASMailbox" in BY_KEY[keys[2]].hint.text


def test_postfixs_535_gets_the_generic_login_hint_and_gmails_gets_googles() -> None:
    postfix = "535 5.7.8 Error: authentication failed: (reason unavailable)"
    assert find_rule(None, postfix) is BY_KEY["login-refused"]
    gmail = BY_KEY["gmail-bad-credentials"].example
    assert find_rule("gmail", gmail) is BY_KEY["gmail-bad-credentials"]
    # An explicit provider that is really Gmail still gets Google's hint from the words.
    assert find_rule(None, gmail) is BY_KEY["gmail-bad-credentials"]


def test_another_providers_rules_do_not_apply_to_a_preset() -> None:
    tenant = BY_KEY["microsoft-smtp-auth-disabled-tenant"].example
    assert find_rule("gmail", tenant) is BY_KEY["login-refused"]


def test_words_other_servers_also_send_need_the_provider_to_be_known() -> None:
    refused = "NO [AUTHENTICATIONFAILED] Authentication failed."
    assert find_rule("icloud", refused) is BY_KEY["icloud-app-specific-password"]
    assert find_rule(None, refused) is BY_KEY["imap-login-refused"]
    assert find_rule("fastmail", refused) is BY_KEY["imap-login-refused"]
    assert find_rule(None, "550 Request failed; Mailbox unavailable") is None


def test_enhanced_codes_match_whole_numbers_only() -> None:
    retired = "550 5.7.30 Basic authentication is not supported for Client Submission."
    assert find_rule("office365", retired) is BY_KEY["microsoft-basic-auth-retired"]
    assert (
        find_rule("office365", "535 5.7.3 Authentication unsuccessful")
        is BY_KEY["microsoft-authentication-unsuccessful"]
    )
    assert find_rule("office365", "550 5.7.300 something else") is None


def test_an_unknown_reply_has_no_hint() -> None:
    assert hint_for(None, "250 2.0.0 Ok: queued as ABC") is None
    assert hint_for("gmail", "421 4.7.0 Try again later, closing connection") is None


def test_presets_are_recognised_by_their_server_host() -> None:
    assert preset_for_host("smtp.gmail.com") == "gmail"
    assert preset_for_host("SMTP.Office365.com.") == "office365"
    assert preset_for_host("imap.mail.me.com") == "icloud"
    assert preset_for_host("127.0.0.1") is None


def test_delivery_errors_carry_the_hint_into_the_apps_reply() -> None:
    rule = BY_KEY["gmail-app-password"]
    code, message = 534, rule.example.replace("534-", "").replace("534 ", "")
    error = auth_error(code, message, "alice@gmail.com", "smtp.gmail.com:465")
    assert isinstance(error, PermanentFailure)
    assert error.hint == rule.hint.text
    assert error.reply.line.startswith("554 5.7.9 login as alice@gmail.com at smtp.gmail.com:465")
    assert error.reply.line.endswith(f" (hint: {rule.hint.text})")
    assert "(hint:" not in error.text


def test_a_refusal_without_a_known_hint_reads_as_before() -> None:
    error = reply_error(550, "5.1.1 no such user", "mail.example.org:587")
    assert error.hint is None
    assert error.reply.line == "550 5.1.1 mail.example.org:587 said: 550 5.1.1 no such user"


def test_a_long_provider_reply_is_cut_so_the_hint_stays_within_512_octets() -> None:
    words = "5.2.0 " + "SendAsDeniedException " * 60
    error = reply_error(554, words, "smtp.office365.com:587")
    assert error.hint == BY_KEY["microsoft-send-as-denied"].hint.text
    assert len(error.reply.line.encode()) <= REPLY_LINE_BYTES
    assert error.reply.line.endswith(f"... (hint: {error.hint})")


def test_connection_errors_get_the_wrong_port_hint() -> None:
    refused = ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 2465)")
    error = upstream_error(refused, "127.0.0.1:2465")
    assert error.hint == BY_KEY["connection-refused"].hint.text
    assert error.reply.line.startswith("451 4.4.1 127.0.0.1:2465 unreachable")
