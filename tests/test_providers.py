"""Provider presets and the address-domain check."""

from __future__ import annotations

import pytest

from relay.providers import PRESETS, Endpoint, TlsMode, address_domain, email_fits

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
