"""Provider presets and the address-domain check."""

from __future__ import annotations

import pytest

from relay.providers.presets import (
    PRESETS,
    Endpoint,
    TlsMode,
    address_domain,
    email_fits,
    mailbox_key,
    mx_mismatch,
)

GMAIL = PRESETS["gmail"].domains


@pytest.mark.parametrize("email", ["alice@gmail.com", "alice@googlemail.com", "Alice@GMail.COM"])
def test_gmail_addresses_fit_the_gmail_preset(email: str) -> None:
    assert email_fits(email, GMAIL) is None


def test_other_domain_does_not_fit_gmail_and_the_message_says_what_would() -> None:
    problem = email_fits("alice@example.org", GMAIL)
    assert problem is not None
    assert "alice@example.org" in problem
    assert "@gmail.com" in problem and "@googlemail.com" in problem


def test_lookalike_subdomain_does_not_fit_gmail() -> None:
    assert email_fits("alice@gmail.com.example.org", GMAIL) is not None


def test_any_address_fits_a_preset_without_fixed_domains() -> None:
    assert PRESETS["google-workspace"].domains == ()
    assert email_fits("alice@example.org", PRESETS["google-workspace"].domains) is None
    assert email_fits("bob@contoso.example", PRESETS["office365"].domains) is None


def test_address_domain_is_the_lower_cased_part_after_the_last_at() -> None:
    assert address_domain('"a@b"@Example.ORG') == "example.org"
    assert address_domain("no-at-sign") == ""


def test_presets_carry_the_documented_submission_endpoints() -> None:
    assert PRESETS["gmail"].smtp == Endpoint("smtp.gmail.com", 465, TlsMode.IMPLICIT)
    assert PRESETS["office365"].smtp == Endpoint("smtp.office365.com", 587, TlsMode.STARTTLS)
    assert PRESETS["icloud"].smtp == Endpoint("smtp.mail.me.com", 587, TlsMode.STARTTLS)
    assert PRESETS["outlook"].smtp == Endpoint("smtp-mail.outlook.com", 587, TlsMode.STARTTLS)


def test_providers_known_to_file_their_own_sent_copy_are_marked() -> None:
    filing = {name for name, preset in PRESETS.items() if preset.files_sent_itself}
    assert filing == {"gmail", "google-workspace", "office365", "outlook", "zoho", "zoho-pro"}


def test_every_preset_is_named_by_its_key_and_cites_sources() -> None:
    required = {"gmail", "google-workspace", "office365", "outlook", "yahoo", "icloud"}
    assert required <= set(PRESETS)
    for name, preset in PRESETS.items():
        assert preset.name == name
        assert preset.sources and all(
            url.startswith(("https://", "http://")) for url in preset.sources
        )


def test_presets_cannot_be_changed_at_run_time() -> None:
    with pytest.raises(TypeError):
        PRESETS["evil"] = PRESETS["gmail"]  # type: ignore[index]  # the point: it is read-only


def test_mailbox_key_folds_gmail_addresses_only_for_the_gmail_preset() -> None:
    assert mailbox_key("First.Last+x@GoogleMail.com", "gmail") == "firstlast@gmail.com"
    assert mailbox_key("First.Last+x@gmail.com", None) == "first.last+x@gmail.com"
    assert mailbox_key("first.last+x@example.org", "gmail") == "first.last+x@example.org"


def test_mx_elsewhere_is_a_warning_naming_the_hosts() -> None:
    warning = mx_mismatch("google-workspace", "example.org", ["mx1.example-mail.net."])
    assert warning is not None
    assert "example.org" in warning and "mx1.example-mail.net" in warning
    assert "google-workspace" in warning


@pytest.mark.parametrize(
    ("preset", "hosts"),
    [
        ("google-workspace", ["ASPMX.L.GOOGLE.COM.", "alt1.aspmx.l.google.com"]),
        ("google-workspace", ["smtp.google.com"]),
        ("office365", ["example-org.mail.protection.outlook.com"]),
        ("zoho-pro", ["mx.zoho.eu", "mx2.zoho.eu"]),
    ],
)
def test_mx_at_the_presets_provider_gives_no_warning(preset: str, hosts: list[str]) -> None:
    assert mx_mismatch(preset, "example.org", hosts) is None


def test_no_mx_warning_without_dns_an_mx_table_or_a_preset() -> None:
    assert mx_mismatch("office365", "example.org", None) is None  # DNS could not tell
    assert mx_mismatch("office365", "example.org", []) is None
    assert mx_mismatch("fastmail", "example.org", ["mx.example.net"]) is None  # no table
    assert mx_mismatch(None, "example.org", ["mx.example.net"]) is None
    # A lookalike is not the provider's host.
    assert mx_mismatch("office365", "example.org", ["evil-outlook.com"]) is not None
