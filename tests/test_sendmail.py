"""relay sendmail: a sendmail drop-in that hands mail to the daemon's Unix socket, no password."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from relay.cli.command import main
from relay.cli.mailargs import Mode, parse_sendmail
from relay.cli.sendmail import run_sendmail
from relay.config.load import load_config, parse_config, render_config
from relay.errors import ConfigError
from tests.entrylab import ROOT, lab, make_template, provider_for
from tests.harness import running_daemon

# Debian cron's MAILARGS ("%s -FCronDaemon -i -B8BITMIME -oem %s") and the header it writes.
CRON_ARGS = ["-FCronDaemon", "-i", "-B8BITMIME", "-oem", "bob@example.net"]
CRON_MAIL = (
    b"From: root (Cron Daemon)\n"
    b"To: bob@example.net\n"
    b"Subject: Cron <root@host> /usr/local/bin/nightly\n"
    b"MIME-Version: 1.0\n"
    b"Content-Type: text/plain; charset=UTF-8\n"
    b"Content-Transfer-Encoding: 8bit\n"
    b"X-Cron-Env: <SHELL=/bin/sh>\n"
    b"X-Cron-Env: <LOGNAME=root>\n"
    b"\n"
    b"backup finished: 3 files, caf\xc3\xa9\n"
)
ROOT_IS_ALICE = {"unix_users": {"root": "alice"}, "reply": "verdict"}


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """State with users alice and bob, made once for the module."""
    return make_template(tmp_path_factory.mktemp("sendmail"), provider_for(None))


# --- The command line, as callers write it ---


def test_crons_invocation_reads_as_postfixs_sendmail_reads_it() -> None:
    call = parse_sendmail(CRON_ARGS)
    assert call.mode is Mode.DELIVER
    assert (call.full_name, call.dots_end, call.body) == ("CronDaemon", False, "8BITMIME")
    assert call.recipients == ("bob@example.net",) and call.sender is None


def test_phps_and_mailxs_options_are_understood() -> None:
    assert parse_sendmail(["-t", "-i"]).from_headers
    assert parse_sendmail(["-ti", "-fwww@example.org"]).sender == "www@example.org"
    assert parse_sendmail(["-oi", "-r", "<a@example.org>", "--", "b@example.org"]).sender == (
        "a@example.org"
    )
    ignored = ["-odi", "-odb", "-oep", "-oem", "-om", "-U", "-N", "never", "-V", "env", "-bm"]
    assert parse_sendmail([*ignored, "x@example.org"]).recipients == ("x@example.org",)
    assert parse_sendmail(["-bs"]).mode is Mode.SMTP


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        (["-Z", "bob@example.org"], "unknown option -Z"),
        (["-t", "--frobnicate"], "unknown option --frobnicate"),
        (["-f"], "option -f needs a value"),
        (["-bs", "bob@example.org"], "-bs takes no recipients"),
        (["-bp"], "-bp is not supported"),
        (["-q30m"], "-q (run the queue) is not supported"),
        (["-B", "BINARYMIME", "bob@example.org"], "-B BINARYMIME"),
    ],
)
def test_bad_options_exit_64_with_one_line_naming_them(arguments: list[str], named: str) -> None:
    err = io.StringIO()
    status = run_sendmail(arguments, None, io.BytesIO(b"Subject: x\n\nx\n"), io.StringIO(), err)
    assert status == os.EX_USAGE
    assert err.getvalue().count("\n") == 1 and named in err.getvalue()


def test_an_empty_message_exits_65_and_nothing_is_sent(tmp_path: Path) -> None:
    err = io.StringIO()
    status = run_sendmail(["bob@example.org"], None, io.BytesIO(b"\n"), io.StringIO(), err)
    assert status == os.EX_DATAERR and "empty message" in err.getvalue()


def test_a_recipient_without_a_domain_exits_67_before_anything_is_sent() -> None:
    err = io.StringIO()
    status = run_sendmail(["root"], None, io.BytesIO(CRON_MAIL), io.StringIO(), err)
    assert status == os.EX_NOUSER and "'root' has no domain" in err.getvalue()


def test_a_symlink_named_sendmail_runs_sendmails_command_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    umask = os.umask(0o022)
    try:
        assert main(["--help"], prog="/usr/sbin/sendmail") == 0
        assert main(["-bi"], prog="/usr/sbin/sendmail") == 0  # newaliases: nothing to do
    finally:
        os.umask(umask)
    assert "usage: relay sendmail" in capsys.readouterr().out


# --- The socket: the caller's Unix user picks the relay user ---


async def test_a_mapped_unix_user_sends_as_its_relay_user_without_a_password(
    template: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="relay")
    async with lab(template, tmp_path / "relay", [ROOT_IS_ALICE]) as running:
        status, err = await running.sendmail(CRON_ARGS, CRON_MAIL)
    assert status == os.EX_OK, err
    [mail] = running.upstream.handler.received
    assert (mail.sender, mail.recipients) == ("alice@example.org", ["bob@example.net"])
    # cron's local From (root, no domain) becomes alice's, with cron's name for itself.
    assert b"From: Cron Daemon <alice@example.org>\r\n" in mail.data
    assert "caf\u00e9".encode() in mail.data and b"Message-ID: <" in mail.data
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("session.")]
    assert any(f"via=sendmail uid={os.getuid()}" in m and "user=alice" in m for m in logged)


async def test_t_sends_to_to_cc_and_bcc_and_no_recipient_sees_the_bcc(
    template: Path, tmp_path: Path
) -> None:
    message = (
        b"To: Bob <bob@example.net>\nCc: carol@example.net\nBcc: dave@example.net\n"
        b"Subject: minutes\n\nSee you.\n"
    )
    async with lab(template, tmp_path / "relay", [ROOT_IS_ALICE]) as running:
        status, err = await running.sendmail(["-t", "-i"], message)
    assert status == os.EX_OK, err
    [mail] = running.upstream.handler.received
    assert sorted(mail.recipients) == ["bob@example.net", "carol@example.net", "dave@example.net"]
    assert b"Bcc" not in mail.data and b"From: alice@example.org" in mail.data


async def test_an_unmapped_unix_user_exits_77_naming_itself_and_how_to_map_it(
    template: Path, tmp_path: Path
) -> None:
    listener = {"unix_users": {"www-data": "alice"}, "reply": "verdict"}
    async with lab(template, tmp_path / "relay", [listener]) as running:
        status, err = await running.sendmail(CRON_ARGS, CRON_MAIL)
    assert status == os.EX_NOPERM
    assert f"Unix user root (uid {os.getuid()}) may not send" in err
    assert "listen[0].unix_users: {root: LOGIN}" in err and err.count("\n") == 1
    assert running.upstream.handler.received == [] and running.upstream.handler.connections == 0


async def test_with_the_daemon_stopped_it_exits_75_and_the_callers_retry_goes_through_once(
    template: Path, tmp_path: Path
) -> None:
    async with lab(template, tmp_path / "relay", [ROOT_IS_ALICE], start=False) as stopped:
        status, err = await stopped.sendmail(CRON_ARGS, CRON_MAIL)
        assert status == os.EX_TEMPFAIL
        assert "relay is not running" in err and "try again later" in err
        async with running_daemon(stopped.setup):
            status, err = await stopped.sendmail(CRON_ARGS, CRON_MAIL)
        assert status == os.EX_OK, err
        assert len(stopped.upstream.handler.received) == 1
        listed = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "relay", "--config", str(stopped.config_path), "queue", "list"],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            check=True,
        )
    assert "alice" not in listed.stdout  # delivered, and not queued a second time


async def test_a_message_over_the_size_limit_exits_65(template: Path, tmp_path: Path) -> None:
    big = b"Subject: big\n\n" + b"x" * 70 + b"\n"
    limits = {"max_message_bytes": 2000}
    async with lab(template, tmp_path / "relay", [ROOT_IS_ALICE], limits=limits) as running:
        status, err = await running.sendmail(["-i", "bob@example.net"], big * 40)
    assert status == os.EX_DATAERR and "552 5.3.4" in err
    assert running.upstream.handler.received == []


async def test_a_sender_that_is_not_the_users_exits_77_listing_the_allowed_ones(
    template: Path, tmp_path: Path
) -> None:
    async with lab(template, tmp_path / "relay", [ROOT_IS_ALICE]) as running:
        status, err = await running.sendmail(
            ["-f", "noreply@example.com", "bob@example.net"], b"Subject: x\n\nx\n"
        )
    assert status == os.EX_NOPERM
    assert "553 5.7.1" in err and "allowed: alice@example.org" in err


async def test_bs_carries_a_real_smtp_clients_conversation_over_a_pipe(
    template: Path, tmp_path: Path
) -> None:
    async with lab(template, tmp_path / "relay", [ROOT_IS_ALICE]) as running:
        relay = f"{sys.executable} -m relay --config {running.config_path} sendmail -bs"
        swaks = [
            *("swaks", "--pipe", relay, "--from", "alice@example.org", "--to", "bob@example.net"),
            *("--header", "Subject: over a pipe", "--body", "Sent with swaks --pipe."),
        ]
        done = await asyncio.to_thread(
            subprocess.run,
            swaks,
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            check=False,
        )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "<-  250 2.0.0" in done.stdout
    [mail] = running.upstream.handler.received
    assert mail.sender == "alice@example.org" and b"Subject: over a pipe" in mail.data


async def test_bs_with_the_daemon_stopped_greets_with_421_and_exits_75(
    template: Path, tmp_path: Path
) -> None:
    async with lab(template, tmp_path / "relay", [ROOT_IS_ALICE], start=False) as stopped:
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "relay", "--config", str(stopped.config_path), "sendmail"]
            + ["-bs"],
            input=b"EHLO app\r\nQUIT\r\n",
            capture_output=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            check=False,
        )
    assert done.returncode == os.EX_TEMPFAIL
    assert done.stdout.startswith(b"421 4.3.2 ")


# --- The config: one relay user per Unix user, keys on the right kind of listener ---


def config_error(tmp_path: Path, listen: str) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(f"listen:\n{listen}providers:\n  lab: {{smtp: {{host: h.example}}}}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return str(caught.value)


def test_one_unix_user_mapped_to_two_relay_users_is_an_error_naming_the_key_path(
    tmp_path: Path,
) -> None:
    twice = "  - socket: /run/relay/relay.sock\n    unix_users: {root: alice, '0': bob}\n"
    assert (
        "listen[0].unix_users.0: uid 0 is already mapped to relay user 'alice' by "
        "listen[0].unix_users.root" in config_error(tmp_path, twice)
    )
    repeated = "  - socket: /run/relay/relay.sock\n    unix_users:\n      root: a\n      root: b\n"
    assert "at listen[0].unix_users.root" in config_error(tmp_path, repeated)


@pytest.mark.parametrize(
    ("listen", "problem"),
    [
        ("  - {socket: /r.sock, port: 25}\n", "listen[0].port: applies only to an address"),
        ("  - {port: 0, unix_users: {root: a}}\n", "listen[0].unix_users: applies only to a"),
        ("  - {socket: /r.sock, unix_users: {no-such-user-here: a}}\n", "no Unix user"),
        ("  - {socket: /a.sock}\n  - {socket: /b.sock}\n", "listen[1].socket: only one"),
    ],
)
def test_socket_keys_on_the_wrong_listener_name_the_key(
    tmp_path: Path, listen: str, problem: str
) -> None:
    assert problem in config_error(tmp_path, listen)


def test_a_socket_listener_renders_and_reads_back_the_same(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        "listen:\n  - {address: 127.0.0.1, port: 0}\n"
        "  - {socket: relay.sock, unix_users: {root: alice, www-data: alice}}\n"
        "  - {address: 127.0.0.1, port: 0, sender_mapped: true, users: [bob]}\n"
        "providers:\n  lab: {smtp: {host: h.example, tls: starttls}}\n"
    )
    config = load_config(path)
    assert config.listen[1].socket == tmp_path / "relay.sock"
    again = parse_config(yaml.safe_load(render_config(config)), str(path), tmp_path)
    assert again == config
