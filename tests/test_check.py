"""`relay check`: every stage against the real peers, and each provider reply it has a hint for."""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
import trustme
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from relay.check.certificate import Certificate
from relay.check.report import STAGES
from relay.providers.hintrule import HintRule
from relay.providers.hints import RULES
from relay.providers.presets import PRESETS
from relay.sent.imapwire import quoted
from tests.harness import CliResult, RelaySetup, running_daemon, write_config
from tests.peers.mailpeers import MailPeers
from tests.test_sent import without_default_folders
from tests.upstream import recording_upstream

SCHEMA = json.loads(
    (Path(__file__).resolve().parent.parent / "docs" / "check-report.schema.json").read_text()
)
PASSWORD = "upstream-Pa55"
FAST = {"connect_timeout": 2, "timeout": 5}


# --- A small validator for the documented schema: the keywords it uses, nothing more ---


def schema_problems(value: Any, schema: dict[str, Any], path: str = "$") -> list[str]:
    """Where value breaks schema (type, enum, required, properties, items, sizes, $ref)."""
    if "$ref" in schema:
        name = schema["$ref"].removeprefix("#/$defs/")
        return schema_problems(value, SCHEMA["$defs"][name], path)
    problems = []
    kinds: dict[str, type | tuple[type, ...]] = {
        "string": str,
        "number": (int, float),
        "integer": int,
        "boolean": bool,
        "object": dict,
        "array": list,
        "null": type(None),
    }
    wanted = schema.get("type")
    if wanted is not None:
        names = wanted if isinstance(wanted, list) else [wanted]
        is_bool = isinstance(value, bool)
        if not any(isinstance(value, kinds[n]) and (n == "boolean" or not is_bool) for n in names):
            return [f"{path}: expected {wanted}, got {value!r}"]
    if "enum" in schema and value not in schema["enum"]:
        problems.append(f"{path}: {value!r} not in {schema['enum']}")
    if "minimum" in schema and value < schema["minimum"]:
        problems.append(f"{path}: {value!r} below {schema['minimum']}")
    if isinstance(value, dict):
        for key in schema.get("required", []):
            if key not in value:
                problems.append(f"{path}: missing {key!r}")
        properties = schema.get("properties", {})
        for key, item in value.items():
            if key in properties:
                problems += schema_problems(item, properties[key], f"{path}.{key}")
            elif schema.get("additionalProperties") is False:
                problems.append(f"{path}: unexpected key {key!r}")
    if isinstance(value, list):
        if not schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", len(value)):
            problems.append(f"{path}: {len(value)} items")
        for index, item in enumerate(value):
            problems += schema_problems(item, schema.get("items", {}), f"{path}[{index}]")
    return problems


def report_of(result: CliResult) -> dict[str, Any]:
    """The --json report, checked against docs/check-report.schema.json."""
    report: dict[str, Any] = json.loads(result.out)
    assert schema_problems(report, SCHEMA) == []
    assert [stage["name"] for stage in report["stages"]] == list(STAGES)
    assert result.status == (0 if report["passed"] else 1)
    return report


def stage(report: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(s for s in report["stages"] if s["name"] == name)
    return found


def assert_failed_at(report: dict[str, Any], name: str) -> dict[str, Any]:
    """The report failed at stage name and ran nothing after it."""
    assert report["failed_stage"] == name and not report["passed"]
    later = list(STAGES)[list(STAGES).index(name) + 1 :]
    assert all(stage(report, later_name)["status"] == "skip" for later_name in later)
    failed = stage(report, name)
    assert failed["status"] == "fail" and failed["fix"]
    return failed


def test_schema_validator_catches_what_the_schema_forbids() -> None:
    good = {"name": "dns", "status": "pass", "seconds": 0.1, "summary": "ok", "reply": None}
    good |= {"fix": None, "source": None, "warnings": [], "facts": {}}
    stage_schema = {"$ref": "#/$defs/stage"}
    assert schema_problems(good, stage_schema) == []
    assert schema_problems({**good, "status": "maybe"}, stage_schema)
    assert schema_problems({**good, "seconds": True}, stage_schema)
    assert schema_problems({**good, "extra": 1}, stage_schema)
    assert schema_problems({k: v for k, v in good.items() if k != "fix"}, stage_schema)


# --- Against the real Postfix and Dovecot ---


def peers_setup(peers: MailPeers, root: Path, **smtp: Any) -> RelaySetup:
    """relay with provider 'lab' on the peers (STARTTLS submission unless smtp says else)."""
    lab = {
        "smtp": {"host": peers.host, "port": peers.submission_port, "tls": "starttls", **smtp},
        "imap": {"host": peers.host, "port": peers.imaps_port, "tls": "implicit"},
        "ca_file": str(peers.ca_file),
    }
    return write_config(root, {"lab": lab}, upstream=FAST)


def check(setup: RelaySetup, *args: str) -> dict[str, Any]:
    return report_of(setup.cli("check", *args, "--json"))


def message_uids(peers: MailPeers, local: str, folder: str, message_id: str) -> list[bytes]:
    client = peers.imap(peers.accounts[local])
    try:
        assert client.select(quoted(folder))[0] == "OK"
        _, found = client.uid("SEARCH", "HEADER", "Message-ID", quoted(message_id))
        uids: list[bytes] = found[0].split() if found and found[0] else []
        if uids:
            client.uid("STORE", b",".join(uids).decode(), "+FLAGS", "(\\Deleted)")
            client.expunge()
        return uids
    finally:
        client.logout()


@pytest.mark.peers
def test_full_check_passes_and_the_test_mails_copy_is_seen_in_alices_sent(
    mail_peers: MailPeers, tmp_path: Path
) -> None:
    setup = peers_setup(mail_peers, tmp_path)
    alice, bob = mail_peers.accounts["alice"], mail_peers.accounts["bob"]
    setup.add_user("alice", "lab", alice.address, alice.password)
    report = check(setup, "alice", "--send-to", bob.address)
    assert report["passed"] and report["failed_stage"] is None
    statuses = {s["name"]: s["status"] for s in report["stages"]}
    assert statuses.pop("oauth2") == "skip"  # alice logs in with a password
    assert statuses.pop("graph") == "skip"  # the provider sends with SMTP
    assert set(statuses.values()) == {"pass"}, report
    tls = stage(report, "tls")["facts"]
    assert tls["certificate"]["names"] == ["localhost", "127.0.0.1"]
    assert tls["version"] in ("TLSv1.2", "TLSv1.3")
    assert "PLAIN" in stage(report, "ehlo")["facts"]["auth"]
    assert stage(report, "sent-folder")["facts"] == {"folder": "Sent", "found_by": "special-use"}
    message_id = stage(report, "send")["facts"]["message_id"]
    assert stage(report, "sent-copy")["facts"] == {"folder": "Sent", "appended": True}
    # What the check saw, seen again from outside (and cleaned up: the mailboxes are shared).
    assert len(message_uids(mail_peers, "alice", "Sent", message_id)) == 1
    mail_peers.wait_for_messages(bob, 1)
    text = setup.cli("check", "alice")
    assert text.status == 0 and "PASS  sent-folder" in text.out
    assert "SKIP  send" in text.out and "--send-to" in text.out
    listing = setup.cli("user", "list").out.splitlines()[1]
    assert listing.split()[3] == "enabled" and listing.endswith(" pass")


@pytest.mark.peers
def test_wrong_password_fails_at_auth_with_postfixs_reply(
    mail_peers: MailPeers, tmp_path: Path
) -> None:
    setup = peers_setup(mail_peers, tmp_path)
    setup.add_user("alice", "lab", mail_peers.accounts["alice"].address, "not-the-password")
    result = setup.cli("check", "alice")
    assert result.status == 1
    assert "FAIL  auth" in result.out and "535 5.7.8 Error: authentication failed" in result.out
    assert "not-the-password" not in result.out + result.err
    failed = assert_failed_at(check(setup, "alice"), "auth")
    assert failed["reply"].startswith("535 5.7.8 Error: authentication failed")
    assert "relay user set-password" in failed["fix"]
    assert failed["source"] == "https://www.rfc-editor.org/rfc/rfc4954#section-6"
    assert "fail at auth" in setup.cli("user", "list").out
    shown = setup.cli("user", "show", "alice").out
    assert "fail at auth: 535 5.7.8 Error: authentication failed" in shown


@pytest.mark.peers
def test_implicit_tls_on_the_starttls_port_fails_at_tls_saying_use_starttls(
    mail_peers: MailPeers, tmp_path: Path
) -> None:
    setup = peers_setup(mail_peers, tmp_path, tls="implicit")
    setup.add_user("alice", "lab", mail_peers.accounts["alice"].address, PASSWORD)
    failed = assert_failed_at(check(setup, "alice"), "tls")
    assert "WRONG_VERSION_NUMBER" in failed["reply"]
    assert failed["fix"] == rule("tls-on-starttls-port").hint.text


@pytest.mark.peers
def test_starttls_on_the_implicit_tls_port_fails_at_tls_saying_use_implicit(
    mail_peers: MailPeers, tmp_path: Path
) -> None:
    setup = peers_setup(mail_peers, tmp_path, port=mail_peers.submissions_port)
    setup.add_user("alice", "lab", mail_peers.accounts["alice"].address, PASSWORD)
    failed = assert_failed_at(check(setup, "alice"), "tls")
    assert "Timed out waiting for server ready message" in failed["reply"]
    assert failed["fix"] == rule("starttls-on-tls-port").hint.text


@pytest.mark.peers
def test_port_with_nothing_listening_fails_at_tcp_with_the_wrong_port_hint(
    mail_peers: MailPeers, tmp_path: Path
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free_port = probe.getsockname()[1]
    setup = peers_setup(mail_peers, tmp_path, port=free_port)
    setup.add_user("alice", "lab", mail_peers.accounts["alice"].address, PASSWORD)
    report = check(setup, "alice")
    failed = assert_failed_at(report, "tcp")
    assert "Connect call failed" in failed["reply"]
    assert failed["fix"] == rule("connection-refused").hint.text
    assert stage(report, "dns")["status"] == "pass"


@pytest.mark.peers
def test_account_without_a_sent_folder_fails_at_sent_folder_listing_the_folders(
    private_mail_peers: MailPeers, tmp_path: Path
) -> None:
    peers = private_mail_peers
    without_default_folders(peers, "dave")
    dave = peers.accounts["dave"]
    setup = peers_setup(peers, tmp_path)
    setup.add_user("dave", "lab", dave.address, dave.password)
    failed = assert_failed_at(check(setup, "dave"), "sent-folder")
    assert failed["reply"] == "folders: INBOX"
    assert "relay user set dave --sent-folder NAME" in failed["fix"]
    assert stage(check(setup, "dave"), "imap-login")["status"] == "pass"
    # A folder the user names is created at the first copy: a warning, not a failure.
    assert setup.cli("user", "set", "dave", "--sent-folder", "Enviadas").status == 0
    named = stage(check(setup, "dave"), "sent-folder")
    assert named["status"] == "pass" and "does not exist yet" in named["warnings"][0]


@pytest.mark.peers
def test_carol_without_special_use_finds_itens_enviados_by_name(
    mail_peers: MailPeers, tmp_path: Path
) -> None:
    setup = peers_setup(mail_peers, tmp_path)
    carol = mail_peers.accounts["carol"]
    setup.add_user("carol", "lab", carol.address, carol.password)
    found = stage(check(setup, "carol"), "sent-folder")
    assert found["facts"] == {"folder": "Itens Enviados", "found_by": "known-name"}


@pytest.mark.peers
def test_enable_after_check_keeps_a_new_user_disabled_until_a_check_passes(
    mail_peers: MailPeers, tmp_path: Path
) -> None:
    alice = mail_peers.accounts["alice"]
    lab = {
        "smtp": {"host": mail_peers.host, "port": mail_peers.submission_port, "tls": "starttls"},
        "imap": {"host": mail_peers.host, "port": mail_peers.imaps_port, "tls": "implicit"},
        "ca_file": str(mail_peers.ca_file),
    }
    setup = write_config(tmp_path, {"lab": lab}, upstream=FAST, enable_after_check=True)
    add = ["user", "add", "alice", "--provider", "lab", "--email", alice.address]
    added = setup.cli(*add, "--password-stdin", stdin="wrong\n")
    assert added.status == 0 and "disabled until 'relay check alice' passes" in added.err
    assert "awaiting-check" in setup.cli("user", "list").out
    assert not check(setup, "alice")["user_enabled"]
    assert "awaiting-check" in setup.cli("user", "list").out
    fixed = setup.cli("user", "set-password", "alice", "--password-stdin", stdin=alice.password)
    assert fixed.status == 0
    result = setup.cli("check", "alice")
    assert result.status == 0 and "user alice enabled: the check passed" in result.out
    assert " enabled " in setup.cli("user", "list").out
    # A new password puts the user back to waiting; an operator's disable is never undone.
    setup.cli("user", "set-password", "alice", "--password-stdin", stdin=alice.password)
    assert "awaiting-check" in setup.cli("user", "show", "alice").out
    assert setup.cli("user", "disable", "alice").status == 0
    assert not check(setup, "alice")["user_enabled"]
    assert "state:             disabled" in setup.cli("user", "show", "alice").out


# --- Provider replies a local server cannot produce: replayed by an in-process aiosmtpd ---


@dataclass
class ReplayHandler:
    """Accepts one login and mail, except at the one step where it replays a scripted reply."""

    login: str
    replies: dict[str, str] = field(default_factory=dict)

    def authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        if "auth" in self.replies:
            return AuthResult(success=False, handled=False, message=self.replies["auth"])
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
            self.login.encode(),
            PASSWORD.encode(),
        )
        return AuthResult(success=ok, handled=False, auth_data=self.login if ok else None)

    async def handle_MAIL(  # noqa: N802
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if "mail" in self.replies:
            return self.replies["mail"]
        envelope.mail_from = address
        return "250 2.1.0 Ok"

    async def handle_RCPT(  # noqa: N802
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if "rcpt" in self.replies:
            return self.replies["rcpt"]
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # noqa: N802
        return self.replies.get("data", "250 2.0.0 Ok: queued as REPLAY")


@dataclass
class Replay:
    """A running replaying server: where it is and the CA file that trusts it."""

    handler: ReplayHandler
    port: int
    ca_file: Path


@asynccontextmanager
async def replay_server(
    root: Path,
    login: str,
    *,
    tls: str = "implicit",
    not_after: datetime.datetime | None = None,
) -> AsyncIterator[Replay]:
    """aiosmtpd on 127.0.0.1 port 0 over implicit TLS, STARTTLS, or (tls='none') neither."""
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", not_after=not_after).configure_cert(context)
    ca_file = root / "replay-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    handler = ReplayHandler(login)
    loop = asyncio.get_running_loop()

    def protocol() -> SMTP:
        return SMTP(
            handler,
            hostname="replay.test",
            tls_context=context if tls == "starttls" else None,
            require_starttls=tls == "starttls",
            authenticator=handler.authenticate,
            auth_required=True,
            auth_require_tls=False,
            loop=loop,
        )

    server = await loop.create_server(
        protocol, "127.0.0.1", 0, ssl=context if tls == "implicit" else None
    )
    try:
        yield Replay(handler, server.sockets[0].getsockname()[1], ca_file)
    finally:
        server.close()
        await server.wait_closed()


def email_for(preset: str | None) -> str:
    """An address the preset takes (gmail fixes the domain)."""
    domains = PRESETS[preset].domains if preset else ()
    return f"alice@{domains[0] if domains else 'example.org'}"


def replay_setup(root: Path, replay: Replay, preset: str | None, tls: str = "implicit") -> str:
    """relay with provider 'p' pointed at the replay server; returns alice's address."""
    provider: dict[str, Any] = {
        "smtp": {"host": "127.0.0.1", "port": replay.port, "tls": tls},
        "ca_file": str(replay.ca_file),
        # The presets' IMAP hosts are out of reach here; IMAP is tested on its own below.
        "sent_copy": "never",
    }
    if preset:
        provider["preset"] = preset
    setup = write_config(root, {"p": provider}, upstream=FAST)
    address = email_for(preset)
    setup.add_user("alice", "p", address, PASSWORD)
    return address


def rule(key: str) -> HintRule:
    return next(r for r in RULES if r.key == key)


SMTP_STEPS = ("auth", "mail", "rcpt", "data")
REPLAYED = [r for r in RULES if r.step in SMTP_STEPS]


@pytest.mark.parametrize("hint_rule", REPLAYED, ids=[r.key for r in REPLAYED])
async def test_relay_check_shows_the_hint_for_each_replayed_provider_reply(
    tmp_path: Path, hint_rule: HintRule
) -> None:
    preset = hint_rule.providers[0] if hint_rule.providers else None
    async with replay_server(tmp_path, email_for(preset)) as replay:
        replay.handler.replies[hint_rule.step] = hint_rule.example
        setup_root = tmp_path / "relay"
        replay_setup(setup_root, replay, preset)
        args = ["check", "alice", "--json", "--send-to", "bob@example.net"]
        result = await asyncio.to_thread(RelaySetup(setup_root).cli, *args)
    report = report_of(result)
    failed = assert_failed_at(report, "auth" if hint_rule.step == "auth" else "send")
    assert (failed["fix"], failed["source"]) == (hint_rule.hint.text, hint_rule.hint.source)
    first_line = hint_rule.example.split("\r\n")[0][4:]
    assert first_line.split()[-1] in failed["reply"]


APP_CASES = [
    "gmail-app-password",
    "microsoft-smtp-auth-disabled-tenant",
    "microsoft-send-as-denied",
    "zoho-relaying-disallowed",
]


@pytest.mark.parametrize("key", APP_CASES)
async def test_the_app_hears_the_hint_in_the_5xx_when_real_delivery_fails(
    tmp_path: Path, key: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="relay.attempts")
    hint_rule = rule(key)
    preset = hint_rule.providers[0]
    async with replay_server(tmp_path, email_for(preset)) as replay:
        replay.handler.replies[hint_rule.step] = hint_rule.example
        setup = RelaySetup(tmp_path / "relay")
        address = replay_setup(setup.root, replay, preset)
        secret = setup.cli("user", "new-secret", "alice").out.strip()
        async with running_daemon(setup) as daemon:
            client = aiosmtplib.SMTP(hostname="127.0.0.1", port=daemon.addresses[0][1])
            await client.connect()
            await client.login("alice", secret)
            message = f"From: {address}\r\nTo: bob@example.net\r\nSubject: s\r\n\r\nbody\r\n"
            with pytest.raises(aiosmtplib.SMTPResponseException) as caught:
                await client.sendmail(address, ["bob@example.net"], message.encode())
            with suppress(aiosmtplib.SMTPException):
                await client.quit()
    code, text = caught.value.code, " ".join(caught.value.message.split())
    assert 500 <= code < 600
    assert text.endswith(f"(hint: {hint_rule.hint.text})")
    assert len(f"{code} {caught.value.message}".encode()) <= 510
    assert f"(hint: {hint_rule.hint.text})" in caplog.text  # the delivery.attempt log line


async def test_certificate_for_another_name_fails_at_tls_naming_its_names(tmp_path: Path) -> None:
    ca = trustme.CA()
    async with recording_upstream(ca, tmp_path, tls="implicit", cert_host="mail.example.org") as up:
        provider = {
            "smtp": {"host": up.host, "port": up.port, "tls": "implicit"},
            "ca_file": str(up.ca_file),
        }
        setup = write_config(tmp_path / "relay", {"p": provider}, upstream=FAST)
        setup.add_user("alice", "p", "alice@example.org", PASSWORD)
        result = await asyncio.to_thread(setup.cli, "check", "alice", "--json")
    failed = assert_failed_at(report_of(result), "tls")
    assert "IP address mismatch" in failed["reply"]
    assert failed["fix"] == rule("certificate-host-mismatch").hint.text
    assert failed["facts"]["certificate"]["names"] == ["mail.example.org"]
    assert "the server shows a certificate for mail.example.org" in failed["summary"]
    # TCP, TLS, and the look at the certificate without trusting it: over none was a byte sent.
    assert up.handler.connections == 3 and up.handler.raw == b""


async def test_certificate_from_an_unknown_ca_fails_at_tls_saying_set_ca_file(
    tmp_path: Path,
) -> None:
    async with recording_upstream(trustme.CA(), tmp_path, tls="implicit") as up:
        provider = {"smtp": {"host": up.host, "port": up.port, "tls": "implicit"}}
        setup = write_config(tmp_path / "relay", {"p": provider}, upstream=FAST)
        setup.add_user("alice", "p", "alice@example.org", PASSWORD)
        result = await asyncio.to_thread(setup.cli, "check", "alice", "--json")
    failed = assert_failed_at(report_of(result), "tls")
    assert failed["fix"] == rule("certificate-untrusted").hint.text


async def test_certificate_expiring_within_14_days_passes_with_a_warning(tmp_path: Path) -> None:
    soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=5, hours=1)
    async with replay_server(tmp_path, "alice@example.org", not_after=soon) as replay:
        replay_setup(tmp_path / "relay", replay, None)
        result = await asyncio.to_thread(RelaySetup(tmp_path / "relay").cli, "check", "alice")
    assert result.status == 0, result.out
    assert "warning: the certificate expires in 5 days" in result.out
    assert "passed in" in result.out and "with 1 warning" in result.out


async def test_expired_certificate_fails_at_tls(tmp_path: Path) -> None:
    gone = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1)
    async with replay_server(tmp_path, "alice@example.org", not_after=gone) as replay:
        replay_setup(tmp_path / "relay", replay, None)
        args = ("check", "alice", "--json")
        result = await asyncio.to_thread(RelaySetup(tmp_path / "relay").cli, *args)
    failed = assert_failed_at(report_of(result), "tls")
    assert "certificate has expired" in failed["reply"]
    assert failed["fix"] == rule("certificate-expired").hint.text
    assert failed["facts"]["certificate"]["days_left"] < 0


def test_certificate_warning_starts_14_days_before_expiry() -> None:
    now = 1_700_000_000.0
    cert = Certificate("mail", "CA", ("mail",), not_after=now + 14 * 86400)
    assert cert.warnings(now) == ()
    assert "13 days" in cert.warnings(now + 86400)[0]
    assert "expired" in cert.warnings(now + 15 * 86400)[0]


async def test_server_without_starttls_fails_at_tls_and_never_sees_the_password(
    tmp_path: Path,
) -> None:
    async with replay_server(tmp_path, "alice@example.org", tls="none") as replay:
        replay_setup(tmp_path / "relay", replay, None, tls="starttls")
        result = await asyncio.to_thread(
            RelaySetup(tmp_path / "relay").cli, "check", "alice", "--json"
        )
    failed = assert_failed_at(report_of(result), "tls")
    assert failed["fix"] == rule("no-starttls-offered").hint.text


def test_host_that_does_not_resolve_fails_at_dns(tmp_path: Path) -> None:
    provider = {"smtp": {"host": "no-such-host.invalid", "port": 465, "tls": "implicit"}}
    setup = write_config(tmp_path, {"p": provider}, upstream=FAST)
    setup.add_user("alice", "p", "alice@example.org", PASSWORD)
    failed = assert_failed_at(check(setup, "alice"), "dns")
    assert failed["reply"].startswith("no-such-host.invalid: ")
    assert failed["fix"] == rule("host-not-found").hint.text


def test_unconfigured_provider_fails_at_config_and_unknown_login_is_an_error(
    tmp_path: Path,
) -> None:
    provider = {"smtp": {"host": "127.0.0.1", "port": 465, "tls": "implicit"}}
    setup = write_config(tmp_path, {"p": provider}, upstream=FAST)
    setup.add_user("alice", "p", "alice@example.org", PASSWORD)
    setup.config_path.write_text(
        setup.config_path.read_text().replace("providers:\n  p:", "providers:\n  q:")
    )
    report = check(setup, "alice")
    failed = assert_failed_at(report, "config")
    assert failed["summary"] == "provider 'p' is not configured"
    unknown = setup.cli("check", "nobody")
    assert unknown.status == 1 and "no user named 'nobody'" in unknown.err


# --- IMAP replies, from a scripted IMAP server over implicit TLS ---


@asynccontextmanager
async def refusing_imap(context: ssl.SSLContext) -> AsyncIterator[int]:
    """An IMAP server that offers AUTH=PLAIN and refuses every login as iCloud does."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"* OK IMAP4rev1 ready\r\n")
        try:
            while line := await reader.readline():
                tag, _, command = line.decode().strip().partition(" ")
                verb = command.split(" ")[0].upper()
                if verb == "CAPABILITY":
                    writer.write(f"* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n{tag} OK done\r\n".encode())
                elif verb == "AUTHENTICATE":
                    writer.write(b"+ \r\n")
                    await writer.drain()
                    await reader.readline()
                    refusal = rule("icloud-app-specific-password").example
                    writer.write(f"{tag} {refusal}\r\n".encode())
                else:
                    writer.write(f"* BYE\r\n{tag} OK bye\r\n".encode())
                    return
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=context)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(
    ("preset", "key"),
    [("icloud", "icloud-app-specific-password"), (None, "imap-login-refused")],
)
async def test_imap_login_refused_gets_the_providers_hint(
    tmp_path: Path, preset: str | None, key: str
) -> None:
    async with replay_server(tmp_path, "alice@example.org") as replay:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca = trustme.CA()
        ca.issue_cert("127.0.0.1").configure_cert(context)
        ca_file = tmp_path / "both-ca.pem"
        ca_file.write_bytes(replay.ca_file.read_bytes() + ca.cert_pem.bytes())
        async with refusing_imap(context) as imap_port:
            provider: dict[str, Any] = {
                "smtp": {"host": "127.0.0.1", "port": replay.port, "tls": "implicit"},
                "imap": {"host": "127.0.0.1", "port": imap_port, "tls": "implicit"},
                "ca_file": str(ca_file),
                "sent_copy": "auto",
            }
            if preset:
                provider["preset"] = preset
            setup = write_config(tmp_path / "relay", {"p": provider}, upstream=FAST)
            setup.add_user("alice", "p", "alice@example.org", PASSWORD)
            result = await asyncio.to_thread(setup.cli, "check", "alice", "--json")
    report = report_of(result)
    assert stage(report, "auth")["status"] == "pass"
    failed = assert_failed_at(report, "imap-login")
    assert "[AUTHENTICATIONFAILED] Authentication failed." in failed["reply"]
    assert failed["fix"] == rule(key).hint.text


# Rules whose replies come from a connection rather than a server's words, or from IMAP: the
# tests that produce them.
ELSEWHERE: dict[str, object] = {
    "tls-on-starttls-port": test_implicit_tls_on_the_starttls_port_fails_at_tls_saying_use_starttls,
    "starttls-on-tls-port": test_starttls_on_the_implicit_tls_port_fails_at_tls_saying_use_implicit,
    "connection-refused": test_port_with_nothing_listening_fails_at_tcp_with_the_wrong_port_hint,
    "connect-timeout": "test_hints.py: a dropped SYN cannot be made on loopback",
    "certificate-host-mismatch": test_certificate_for_another_name_fails_at_tls_naming_its_names,
    "certificate-untrusted": test_certificate_from_an_unknown_ca_fails_at_tls_saying_set_ca_file,
    "certificate-expired": test_expired_certificate_fails_at_tls,
    "host-not-found": test_host_that_does_not_resolve_fails_at_dns,
    "no-starttls-offered": test_server_without_starttls_fails_at_tls_and_never_sees_the_password,
    "icloud-app-specific-password": test_imap_login_refused_gets_the_providers_hint,
    "imap-login-refused": test_imap_login_refused_gets_the_providers_hint,
    # relay answers [TRYCREATE] by creating the folder and appending again, so the reply reaches
    # a person only when that fails too: test_hints.py matches it.
    "imap-trycreate": "test_hints.py",
}


def test_every_hint_is_produced_by_a_replay_or_a_named_test() -> None:
    assert {r.key for r in RULES} == {r.key for r in REPLAYED} | set(ELSEWHERE)
