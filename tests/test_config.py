"""The config file: parsing, defaults, presets, and errors that name file and key path."""

from __future__ import annotations

import os
from pathlib import Path
from types import MappingProxyType

import pytest
import yaml

from relay.config.load import (
    DEFAULT_CONFIG_PATH,
    config_path_from,
    load_config,
    parse_config,
    render_config,
)
from relay.config.model import (
    LimitsConfig,
    ListenerConfig,
    LoggingConfig,
    MetricsConfig,
    UpstreamConfig,
)
from relay.errors import ConfigError
from relay.providers.presets import PRESETS, Endpoint, SentCopy, TlsMode
from relay.sent.filing import SentCopyPlan, plan_sent_copy

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.yaml"
LAB = "  lab:\n    smtp: {host: mail.example.org, port: 587, tls: starttls}\n"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def error_of(path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.source == str(path)
    return caught.value


def assert_problem(path: Path, key_path: str, *fragments: str) -> None:
    """The error has a line `FILE: KEY_PATH: ...` that contains every fragment."""
    lines = str(error_of(path)).splitlines()
    matching = [line for line in lines if line.startswith(f"{path}: {key_path}: ")]
    assert matching, f"no problem for {key_path} in:\n" + "\n".join(lines)
    assert any(all(f in line for f in fragments) for line in matching), matching


# Malformed configs: each names the file and the full key path.


def test_port_that_is_not_a_number_names_the_key_path(tmp_path: Path) -> None:
    path = write(tmp_path, "providers:\n  agency:\n    preset: gmail\n    smtp: {port: abc}\n")
    assert_problem(path, "providers.agency.smtp.port", "expected an integer 1-65535, got 'abc'")


def test_yaml_yes_is_not_accepted_as_a_number(tmp_path: Path) -> None:
    path = write(tmp_path, f"limits: {{max_recipients: yes}}\nproviders:\n{LAB}")
    assert_problem(path, "limits.max_recipients", "expected a positive integer, got True")


def test_listen_port_above_65535_names_the_listener_index(tmp_path: Path) -> None:
    path = write(tmp_path, f"listen:\n  - {{port: 2525}}\n  - {{port: 70000}}\nproviders:\n{LAB}")
    assert_problem(path, "listen[1].port", "expected an integer 0-65535, got 70000")


def test_zero_or_negative_timeout_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, f"upstream: {{timeout: 0, connect_timeout: -1}}\nproviders:\n{LAB}")
    assert_problem(path, "upstream.timeout", "expected a positive number of seconds, got 0")
    assert_problem(path, "upstream.connect_timeout", "got -1")


def test_tls_must_be_implicit_or_starttls(tmp_path: Path) -> None:
    path = write(tmp_path, "providers:\n  lab:\n    smtp: {host: h.example, port: 465, tls: ssl}\n")
    assert_problem(path, "providers.lab.smtp.tls", "expected one of implicit, starttls, got 'ssl'")


def test_sent_copy_must_be_auto_always_or_never(tmp_path: Path) -> None:
    path = write(tmp_path, "providers:\n  agency: {preset: gmail, sent_copy: allways}\n")
    assert_problem(path, "providers.agency.sent_copy", "auto, always, never", "'always'?")


def test_unknown_log_level_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, f"logging: {{level: verbose}}\nproviders:\n{LAB}")
    assert_problem(path, "logging.level", "debug, info, warning, error", "'verbose'")


def test_unknown_log_format_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, f"logging: {{format: xml}}\nproviders:\n{LAB}")
    assert_problem(path, "logging.format", "expected one of text, json", "'xml'")


def test_metrics_keys_are_checked_under_their_key_paths(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"metrics: {{enabled: maybe, address: metrics.example.org, port: 70000}}\n"
        f"providers:\n{LAB}",
    )
    assert_problem(path, "metrics.enabled", "expected true or false, got 'maybe'")
    assert_problem(path, "metrics.address", "IP address or 'localhost'", "metrics.example.org")
    assert_problem(path, "metrics.port", "expected an integer 0-65535, got 70000")


def test_misspelt_metrics_key_suggests_the_right_one(tmp_path: Path) -> None:
    path = write(tmp_path, f"metrics: {{enabled: true, prot: 9100}}\nproviders:\n{LAB}")
    assert_problem(path, "metrics.prot", "did you mean 'port'?")


def test_metrics_section_is_read(tmp_path: Path) -> None:
    path = write(
        tmp_path, f"metrics: {{enabled: true, address: '::1', port: 0}}\nproviders:\n{LAB}"
    )
    assert load_config(path).metrics == MetricsConfig(enabled=True, address="::1", port=0)


@pytest.mark.parametrize(
    ("address", "loopback"),
    [("127.0.0.1", True), ("::1", True), ("localhost", True), ("192.0.2.7", False)],
)
def test_metrics_is_loopback_says_whether_others_can_scrape(address: str, loopback: bool) -> None:
    assert MetricsConfig(address=address).is_loopback is loopback


def test_missing_ca_file_names_the_key_and_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, f"providers:\n{LAB}    ca_file: /etc/relay/lab-ca.pem\n")
    assert_problem(path, "providers.lab.ca_file", "file not found: /etc/relay/lab-ca.pem")


def test_ca_file_that_is_a_directory_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, f"providers:\n{LAB}    ca_file: .\n")
    assert_problem(path, "providers.lab.ca_file", "not a regular file")


def test_explicit_provider_without_host_or_tls_names_both(tmp_path: Path) -> None:
    path = write(tmp_path, "providers:\n  lab:\n    smtp: {port: 587}\n")
    assert_problem(path, "providers.lab.smtp.host", "required")
    assert_problem(path, "providers.lab.smtp.tls", "required")


def test_explicit_provider_without_smtp_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, "providers:\n  lab:\n    sent_copy: never\n")
    assert_problem(path, "providers.lab.smtp", "required", "preset")


def test_host_with_a_port_in_it_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, "providers:\n  lab:\n    smtp: {host: 'h.example:587', tls: starttls}\n")
    assert_problem(path, "providers.lab.smtp.host", "no port", "'h.example:587'")


def test_domains_must_be_a_list_of_domains(tmp_path: Path) -> None:
    path = write(tmp_path, f"providers:\n{LAB}    domains: [example.org, 'not a domain']\n")
    assert_problem(path, "providers.lab.domains[1]", "'not a domain'")


def test_section_that_is_not_a_mapping_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, f"limits: [1, 2]\nproviders:\n{LAB}")
    assert_problem(path, "limits", "expected a mapping, got a list")


def test_listen_that_is_not_a_list_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, f"listen: {{address: 127.0.0.1}}\nproviders:\n{LAB}")
    assert_problem(path, "listen", "expected a list of listeners")


def test_listen_address_must_be_an_ip_address_or_localhost(tmp_path: Path) -> None:
    path = write(tmp_path, f"listen: [{{address: relay.example.org}}]\nproviders:\n{LAB}")
    assert_problem(path, "listen[0].address", "IP address or 'localhost'")


# Unknown keys and names.


def test_misspelt_key_is_unknown_and_suggests_the_right_one(tmp_path: Path) -> None:
    path = write(tmp_path, "providers:\n  agency:\n    preset: gmail\n    smpt: {port: 587}\n")
    assert_problem(path, "providers.agency.smpt", "unknown key (did you mean 'smtp'?)")


def test_unknown_key_without_a_near_match_lists_the_known_keys(tmp_path: Path) -> None:
    path = write(tmp_path, f"upstream: {{zzz: 1}}\nproviders:\n{LAB}")
    assert_problem(path, "upstream.zzz", "unknown key (known keys: connect_timeout, timeout)")


def test_misspelt_top_level_key_suggests_the_right_one(tmp_path: Path) -> None:
    path = write(tmp_path, f"provider:\n{LAB}")
    assert_problem(path, "provider", "did you mean 'providers'?")


def test_unknown_preset_suggests_the_nearest_and_lists_the_known_ones(tmp_path: Path) -> None:
    path = write(tmp_path, "providers:\n  agency: {preset: gmial}\n")
    error = error_of(path)
    assert_problem(path, "providers.agency.preset", "'gmial'", "did you mean 'gmail'?")
    assert all(name in str(error) for name in PRESETS)
    # the misspelt preset is the only problem: no "smtp required" noise on top of it
    assert len(error.problems) == 1


# Listeners.


def test_non_loopback_listener_without_tls_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, f"listen: [{{address: 0.0.0.0, port: 2525}}]\nproviders:\n{LAB}")
    assert_problem(
        path,
        "listen[0]",
        "address 0.0.0.0 is not loopback: set tls_cert and tls_key",
        "plaintext",
    )


def test_non_loopback_listener_with_cert_and_key_is_accepted(tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_text("cert")
    (tmp_path / "key.pem").write_text("key")
    path = write(
        tmp_path,
        "listen: [{address: '::', port: 465, tls_cert: cert.pem, tls_key: key.pem}]\n"
        f"providers:\n{LAB}",
    )
    (listener,) = load_config(path).listen
    assert listener.tls_cert == tmp_path / "cert.pem" and listener.tls_key == tmp_path / "key.pem"
    assert not listener.is_loopback


def test_tls_cert_without_tls_key_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_text("cert")
    path = write(tmp_path, f"listen: [{{tls_cert: cert.pem}}]\nproviders:\n{LAB}")
    assert_problem(path, "listen[0].tls_key", "required when tls_cert is set")


def test_listen_port_zero_is_allowed_for_an_os_chosen_port(tmp_path: Path) -> None:
    path = write(tmp_path, f"listen: [{{address: 127.0.0.1, port: 0}}]\nproviders:\n{LAB}")
    assert load_config(path).listen == (ListenerConfig("127.0.0.1", 0),)


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),  # noqa: S104  # a value under test, nothing binds it
        ("192.0.2.10", False),
        ("::", False),
    ],
)
def test_is_loopback_covers_127_slash_8_ipv6_and_localhost(address: str, loopback: bool) -> None:
    assert ListenerConfig(address=address).is_loopback is loopback


# The file as a whole.


def test_all_problems_are_reported_together(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "listen: [{port: -1}]\n"
        "limits: {max_message_bytes: big}\n"
        "providers:\n"
        "  agency: {preset: gmail, smpt: {}}\n"
        "  lab: {smtp: {host: h.example, port: 587, tls: starttls}, sent_copy: sometimes}\n",
    )
    error = error_of(path)
    assert [key_path for key_path, _ in error.problems] == [
        "listen[0].port",
        "limits.max_message_bytes",
        "providers.agency.smpt",
        "providers.lab.sent_copy",
    ]
    assert len(str(error).splitlines()) == 4


def test_missing_file_says_not_found_and_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "config.yaml"
    assert_problem(path, "(file)", "config file not found", "--config")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read any file")
def test_unreadable_file_says_why(tmp_path: Path) -> None:
    path = write(tmp_path, f"providers:\n{LAB}")
    path.chmod(0)
    assert_problem(path, "(file)", "cannot read: Permission denied")


def test_empty_file_is_a_clear_error(tmp_path: Path) -> None:
    path = write(tmp_path, "# nothing yet\n")
    assert_problem(path, "(file)", "is empty", "providers")


def test_document_that_is_a_list_is_a_clear_error(tmp_path: Path) -> None:
    path = write(tmp_path, "- providers\n")
    assert_problem(path, "(file)", "expected a mapping of settings at the top level, got a list")


def test_yaml_syntax_error_gives_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "providers:\n  lab:\n    smtp: {host: a, port: 25\n")
    error = error_of(path)
    assert len(error.problems) == 1
    key_path, why = error.problems[0]
    assert key_path.startswith("line ") and ", column " in key_path
    assert why.startswith("YAML syntax error: ")


def test_key_given_twice_is_an_error_with_both_lines(tmp_path: Path) -> None:
    path = write(tmp_path, f"providers:\n{LAB}{LAB}")
    assert_problem(path, "line 4", "duplicate key 'lab' (first on line 2)")


def test_non_text_provider_name_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, "providers:\n  42: {preset: gmail}\n")
    assert_problem(path, "providers.42", "provider name")


# What a valid file resolves to.


def test_defaults_when_file_has_only_providers(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, f"providers:\n{LAB}"))
    assert config.source == tmp_path / "config.yaml"
    assert config.listen == (ListenerConfig("127.0.0.1", 2525, None, None),)
    assert config.state_dir == Path("/var/lib/relay")
    assert config.key_file == Path("/etc/relay/relay.key")
    assert config.database_path == Path("/var/lib/relay/relay.db")
    # No size limit of relay's own: the provider's applies (issue 22).
    assert config.limits == LimitsConfig(None, 100)
    assert config.upstream == UpstreamConfig(30.0, 60.0)
    assert config.logging == LoggingConfig("info", "text")
    assert config.metrics == MetricsConfig(enabled=False, address="127.0.0.1", port=9325)
    assert config.shutdown_grace == 30.0
    assert config.hostname
    assert isinstance(config.providers, MappingProxyType)


def test_relative_paths_are_taken_from_the_config_files_directory(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("ca")
    config = load_config(
        write(
            tmp_path,
            f"state_dir: state\nkey_file: keys/relay.key\nproviders:\n{LAB}    ca_file: ca.pem\n",
        )
    )
    assert config.state_dir == tmp_path / "state"
    assert config.key_file == tmp_path / "keys" / "relay.key"
    assert config.providers["lab"].ca_file == tmp_path / "ca.pem"


def test_preset_expands_to_its_endpoints_sent_behaviour_and_domains(tmp_path: Path) -> None:
    agency = load_config(write(tmp_path, "providers:\n  agency: {preset: gmail}\n")).providers[
        "agency"
    ]
    gmail = PRESETS["gmail"]
    assert agency.preset == "gmail"
    assert agency.smtp == Endpoint("smtp.gmail.com", 465, TlsMode.IMPLICIT)
    assert agency.imap == gmail.imap
    assert agency.files_sent_itself and agency.sent_copy is SentCopy.AUTO
    assert plan_sent_copy(agency, None) is SentCopyPlan.SKIP  # Gmail files its own copy
    assert agency.domains == ("gmail.com", "googlemail.com")
    assert agency.max_recipients == gmail.max_recipients


def test_keys_given_with_a_preset_override_field_by_field(tmp_path: Path) -> None:
    text = (
        "providers:\n  agency:\n    preset: gmail\n    smtp: {port: 587, tls: starttls}\n"
        "    max_recipients: 20\n    sent_copy: always\n"
    )
    agency = load_config(write(tmp_path, text)).providers["agency"]
    assert agency.smtp == Endpoint("smtp.gmail.com", 587, TlsMode.STARTTLS)
    assert agency.imap == PRESETS["gmail"].imap
    assert agency.max_recipients == 20
    assert plan_sent_copy(agency, None) is SentCopyPlan.APPEND


def test_changing_tls_without_a_port_uses_that_modes_standard_port(tmp_path: Path) -> None:
    text = "providers:\n  agency:\n    preset: gmail\n    smtp: {tls: starttls}\n"
    agency = load_config(write(tmp_path, text)).providers["agency"]
    assert agency.smtp == Endpoint("smtp.gmail.com", 587, TlsMode.STARTTLS)


def test_explicit_provider_has_no_sent_filing_and_no_fixed_domains(tmp_path: Path) -> None:
    text = (
        f"providers:\n{LAB}"
        "    imap: {host: imap.example.org, tls: implicit}\n"
        "    sent_folder: Sent Items\n"
    )
    lab = load_config(write(tmp_path, text)).providers["lab"]
    assert lab.preset is None
    assert lab.smtp == Endpoint("mail.example.org", 587, TlsMode.STARTTLS)
    assert lab.imap == Endpoint("imap.example.org", 993, TlsMode.IMPLICIT)
    assert not lab.files_sent_itself
    assert plan_sent_copy(lab, None) is SentCopyPlan.APPEND_IF_MISSING
    assert lab.domains == () and lab.max_recipients is None and lab.ca_file is None
    assert lab.sent_folder == "Sent Items"


def test_imap_with_starttls_defaults_to_port_143(tmp_path: Path) -> None:
    text = f"providers:\n{LAB}    imap: {{host: mail.example.org, tls: starttls}}\n"
    assert load_config(write(tmp_path, text)).providers["lab"].imap == Endpoint(
        "mail.example.org", 143, TlsMode.STARTTLS
    )


def test_domains_are_normalised_to_lower_case_without_at(tmp_path: Path) -> None:
    text = f"providers:\n{LAB}    domains: ['@Example.ORG', example.net]\n"
    lab = load_config(write(tmp_path, text)).providers["lab"]
    assert lab.domains == ("example.org", "example.net")


def test_sent_copy_always_needs_an_imap_endpoint(tmp_path: Path) -> None:
    path = write(tmp_path, f"providers:\n{LAB}    sent_copy: always\n")
    assert_problem(path, "providers.lab.sent_copy", "needs an imap endpoint")


def test_render_round_trips_through_parse_config(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("ca")
    (tmp_path / "cert.pem").write_text("cert")
    (tmp_path / "key.pem").write_text("key")
    text = (
        "listen:\n  - {address: 127.0.0.1, port: 0}\n"
        "  - {address: 0.0.0.0, port: 587, tls_cert: cert.pem, tls_key: key.pem}\n"
        "state_dir: state\nhostname: relay.example.org\nshutdown_grace: 0\n"
        "limits: {max_recipients: 7}\nupstream: {timeout: 5}\n"
        "logging: {level: debug, format: json}\n"
        "metrics: {enabled: true, address: '::1', port: 0}\n"
        "providers:\n"
        "  agency: {preset: office365, sent_copy: never}\n"
        f"{LAB}    ca_file: ca.pem\n    domains: [example.org]\n"
        "    imap: {host: mail.example.org, port: 1993, tls: implicit}\n"
    )
    config = load_config(write(tmp_path, text))
    rendered = render_config(config)
    assert parse_config(yaml.safe_load(rendered), str(config.source), Path("/elsewhere")) == config


def test_render_shows_the_expanded_preset_and_defaults(tmp_path: Path) -> None:
    rendered = render_config(load_config(write(tmp_path, "providers:\n  a: {preset: icloud}\n")))
    document = yaml.safe_load(rendered)
    assert document["providers"]["a"]["smtp"] == {
        "host": "smtp.mail.me.com",
        "port": 587,
        "tls": "starttls",
    }
    assert document["limits"]["max_message_bytes"] is None
    assert document["limits"]["max_recipients"] == 100
    assert document["limits"]["messages_per_minute"] == 0
    assert document["state_dir"] == "/var/lib/relay"


def test_parse_config_names_the_given_source(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"shutdown_grace": "soon"}, "inline.yaml", tmp_path)
    assert str(caught.value) == (
        "inline.yaml: shutdown_grace: expected a non-negative number of seconds, got 'soon'"
    )


def test_config_path_comes_from_flag_then_environment_then_default() -> None:
    environ = {"RELAY_CONFIG": "/srv/relay.yaml"}
    assert config_path_from("/tmp/c.yaml", environ) == Path("/tmp/c.yaml")
    assert config_path_from(None, environ) == Path("/srv/relay.yaml")
    assert config_path_from(None, {}) == DEFAULT_CONFIG_PATH
    assert config_path_from(None, {"RELAY_CONFIG": ""}) == DEFAULT_CONFIG_PATH


def test_enable_after_check_is_off_by_default_read_and_must_be_true_or_false(
    tmp_path: Path,
) -> None:
    assert not load_config(write(tmp_path, f"providers:\n{LAB}")).enable_after_check
    config = load_config(write(tmp_path, f"enable_after_check: true\nproviders:\n{LAB}"))
    assert config.enable_after_check
    rendered = yaml.safe_load(render_config(config))
    assert rendered["enable_after_check"] is True
    path = write(tmp_path, f"enable_after_check: later\nproviders:\n{LAB}")
    assert_problem(path, "enable_after_check", "expected true or false", "'later'")


def test_example_config_loads() -> None:
    config = load_config(EXAMPLE)
    assert set(config.providers) == {"agency", "work", "lab"}
    assert config.providers["agency"].preset == "gmail"
    work = config.providers["work"].oauth2
    assert work is not None and work.token_url.startswith("https://login.microsoftonline.com/")
    lab = config.providers["lab"]
    assert lab.smtp.tls is TlsMode.STARTTLS and lab.imap is not None
    assert config.listen == (ListenerConfig(),)
    assert config.logging == LoggingConfig() and config.metrics == MetricsConfig()


# The oauth2 section of a provider.


def test_oauth2_on_a_microsoft_preset_takes_the_presets_endpoints_for_the_tenant(
    tmp_path: Path,
) -> None:
    text = "providers:\n  work:\n    preset: office365\n    oauth2:\n"
    text += "      client_id: 00000000-1111\n      tenant: contoso.onmicrosoft.com\n"
    oauth2 = load_config(write(tmp_path, text)).providers["work"].oauth2
    assert oauth2 is not None
    base = "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0"
    assert (oauth2.authorize_url, oauth2.token_url, oauth2.device_url) == (
        f"{base}/authorize",
        f"{base}/token",
        f"{base}/devicecode",
    )
    assert "offline_access" in oauth2.scopes
    assert "https://outlook.office.com/SMTP.Send" in oauth2.scopes


def test_oauth2_on_gmail_has_no_device_flow_and_asks_for_offline_access(tmp_path: Path) -> None:
    secret = tmp_path / "google-secret"
    secret.write_text("GOCSPX-abc\n")
    text = "providers:\n  g:\n    preset: gmail\n    oauth2:\n"
    text += f"      client_id: 123.apps.googleusercontent.com\n      client_secret_file: {secret}\n"
    oauth2 = load_config(write(tmp_path, text)).providers["g"].oauth2
    assert oauth2 is not None and oauth2.device_url is None
    assert oauth2.scopes == ("https://mail.google.com/",)
    client = oauth2.client()
    assert client.client_secret is not None and client.client_secret.reveal() == "GOCSPX-abc"
    assert ("access_type", "offline") in client.authorize_params


def test_oauth2_without_client_id_names_the_key(tmp_path: Path) -> None:
    path = write(tmp_path, "providers:\n  g:\n    preset: gmail\n    oauth2: {tenant: x}\n")
    assert_problem(path, "providers.g.oauth2.client_id", "required")
    assert_problem(path, "providers.g.oauth2.tenant", "has no effect")


def test_oauth2_endpoints_must_be_https_except_on_loopback(tmp_path: Path) -> None:
    text = LAB + "    oauth2:\n      client_id: relay\n      scopes: [mail]\n"
    text += "      authorize_url: http://login.example.org/authorize\n"
    text += "      token_url: http://127.0.0.1:8080/token\n"
    path = write(tmp_path, "providers:\n" + text)
    assert_problem(path, "providers.lab.oauth2.authorize_url", "expected an https:// URL")
    assert len(error_of(path).problems) == 1  # the loopback token_url is fine


def test_oauth2_on_a_provider_without_preset_needs_endpoints_and_scopes(tmp_path: Path) -> None:
    path = write(tmp_path, "providers:\n" + LAB + "    oauth2: {client_id: relay}\n")
    assert_problem(path, "providers.lab.oauth2.authorize_url", "required")
    assert_problem(path, "providers.lab.oauth2.token_url", "required")
    assert_problem(path, "providers.lab.oauth2.scopes", "required")


def test_an_empty_client_secret_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").write_text("\n")
    text = "providers:\n  g:\n    preset: gmail\n    oauth2:\n      client_id: x\n"
    path = write(tmp_path, text + f"      client_secret_file: {tmp_path / 'empty'}\n")
    assert_problem(path, "providers.g.oauth2.client_secret_file", "file is empty")


def test_rendered_oauth2_section_reads_back_to_the_same_config(tmp_path: Path) -> None:
    text = "providers:\n  work:\n    preset: outlook\n    oauth2: {client_id: abc}\n"
    config = load_config(write(tmp_path, text))
    again = parse_config(yaml.safe_load(render_config(config)), "again", tmp_path)
    assert again.providers == config.providers
    rendered = yaml.safe_load(render_config(config))["providers"]["work"]["oauth2"]
    assert rendered["tenant"] == "common" and "authorize_params" not in rendered


def test_google_needs_the_client_secret_and_microsoft_redirects_to_localhost(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, "providers:\n  g:\n    preset: gmail\n    oauth2: {client_id: x}\n")
    assert_problem(path, "providers.g.oauth2.client_secret_file", "required")
    text = "providers:\n  w:\n    preset: outlook\n    oauth2: {client_id: x}\n"
    oauth2 = load_config(write(tmp_path, text)).providers["w"].oauth2
    # Microsoft ignores the port of a registered http://localhost redirect, not of 127.0.0.1.
    assert oauth2 is not None and oauth2.redirect_host == "localhost"


def test_per_ip_exempt_takes_networks_and_names_a_bad_one(tmp_path: Path) -> None:
    good = write(
        tmp_path, "limits: {per_ip_exempt: [10.0.0.0/8, 192.0.2.7, '::1']}\nproviders:\n" + LAB
    )
    assert load_config(good).limits.per_ip_exempt == ("10.0.0.0/8", "192.0.2.7/32", "::1/128")
    bad = write(tmp_path, "limits: {per_ip_exempt: [10.0.0.0/8, 'not a net']}\nproviders:\n" + LAB)
    assert_problem(bad, "limits.per_ip_exempt[1]", "expected a network", "not a net")
    assert LimitsConfig().per_ip_exempt == ("127.0.0.0/8", "::1/128")


def test_data_in_memory_must_hold_the_largest_message_not_streamed_to_the_spool(
    tmp_path: Path,
) -> None:
    good = write(tmp_path, "limits: {max_data_in_memory: 1073741824}\nproviders:\n" + LAB)
    assert load_config(good).limits.max_data_in_memory == 1024 * 1024 * 1024
    # Mail past 1 MiB is streamed to the spool: a budget below the largest mail is fine.
    streamed = write(
        tmp_path,
        "limits: {max_message_bytes: 52428800, max_data_in_memory: 10485760}\nproviders:\n" + LAB,
    )
    assert load_config(streamed).limits.max_data_in_memory == 10485760
    bad = write(
        tmp_path,
        "limits: {max_message_bytes: 52428800, max_data_in_memory: 524288}\nproviders:\n" + LAB,
    )
    assert_problem(
        bad,
        "limits.max_data_in_memory",
        "at least max_message_bytes (52428800) or 1048576",
        "524288",
    )
