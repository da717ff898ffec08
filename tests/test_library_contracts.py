"""The undocumented parts of aiosmtpd and aiosmtplib relay relies on, and their shape.

Each test names one internal and what relay assumes of it. A new library version that breaks
one fails here, loudly, instead of turning every mail into '250 queued' in production; relay
serve refuses to start on it (the last tests). Raise the bounds in pyproject.toml only with
these green.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path

import aiosmtpd.smtp
import aiosmtplib
import aiosmtplib.protocol
import pytest
from aiosmtpd.smtp import SMTP

from relay.cli.command import main
from relay.daemon import check_libraries
from relay.errors import LibraryMismatch
from relay.listener.commandlog import AIOSMTPD_COMMAND_LOG, quiet_command_log
from relay.listener.hooktable import SignedHook
from relay.listener.protocol import (
    AIOSMTPD_INTERNALS,
    AIOSMTPD_SESSION_INTERNALS,
    RelaySMTP,
)
from relay.upstream.pipelining import AIOSMTPLIB_PIPELINING, pipelining_gaps
from relay.upstream.senddata import AIOSMTPLIB_INTERNALS
from tests.harness import write_config

AIOSMTPD_SOURCE = inspect.getsource(aiosmtpd.smtp)


class _Handler:
    async def handle_DATA(self, *args: object) -> str:  # noqa: N802  (aiosmtpd's hook name)
        return "250 OK"


async def test_getaddr_parses_one_address_argument_into_address_and_rest() -> None:
    assert list(inspect.signature(SMTP._getaddr).parameters) == ["self", "arg"]
    session = SMTP(_Handler())
    assert session._getaddr("<a@example.org> SIZE=10") == ("a@example.org", "SIZE=10")


async def test_a_session_keeps_its_commands_and_hooks_in_dicts_relay_can_replace() -> None:
    session = SMTP(_Handler())
    for name in AIOSMTPD_SESSION_INTERNALS[:2]:
        assert isinstance(getattr(session, name), dict), name
    assert "DATA" in session._smtp_methods and "DATA" in session._handle_hooks
    # Dispatch looks the verb up with .get(), which relay's shared Commands table provides.
    assert "method = self._smtp_methods.get(command)" in AIOSMTPD_SOURCE
    assert "hook = self._handle_hooks.get(command)" in AIOSMTPD_SOURCE


async def test_sessions_and_handlers_are_scanned_with_dir_for_the_prefixes_relay_lists() -> None:
    # RelaySMTP and RelayHandler trim __dir__ to these prefixes: a name aiosmtpd looked for
    # under another prefix would silently vanish, so the prefixes are pinned here.
    init = inspect.getsource(SMTP.__init__)
    assert "for m in dir(handler)" in init and 'm.startswith("handle_")' in init
    assert "for m in dir(self)" in init and 'm.startswith("smtp_")' in init
    assert 'mname.startswith("auth_")' in init


def test_the_idle_timer_is_reset_through_one_method_and_its_handle_is_cancelled_at_close() -> None:
    # RelaySMTP overrides _reset_timeout to move a deadline, and keeps one timer in
    # _timeout_handle: aiosmtpd must keep arming it only there and cancelling it at close.
    assert list(inspect.signature(SMTP._reset_timeout).parameters) == ["self", "duration"]
    assert "self._reset_timeout()" in inspect.getsource(SMTP._handle_client)
    assert "self._timeout_handle.cancel()" in inspect.getsource(SMTP.connection_lost)
    assert "self.transport.close()" in inspect.getsource(SMTP._timeout_cb)
    # Assigned only twice: None in __init__, a new timer in _reset_timeout.
    assert len(re.findall(r"self\._timeout_handle\b[^=\n]*= ", AIOSMTPD_SOURCE)) == 2


def test_the_command_loop_logs_each_line_through_the_module_level_sanitized_log() -> None:
    # quiet_command_log replaces aiosmtpd.smtp.sanitized_log: the loop must look it up there,
    # as a module global, at every line (else relay pays the regex again, silently).
    assert AIOSMTPD_COMMAND_LOG in SMTP._handle_client.__code__.co_names
    assert AIOSMTPD_COMMAND_LOG in inspect.getsource(SMTP._handle_client)
    assert callable(getattr(aiosmtpd.smtp, AIOSMTPD_COMMAND_LOG))


async def _auth_line_to_aiosmtpd() -> None:
    server = await asyncio.get_running_loop().create_server(
        lambda: SMTP(_Handler()), "127.0.0.1", 0
    )
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await reader.readline()
    for line in (b"EHLO app.example\r\n", b"AUTH PLAIN AGFwcABzM2NyM3Q=\r\n", b"QUIT\r\n"):
        writer.write(line)
        while (await reader.readline())[3:4] == b"-":
            pass
    writer.close()
    server.close()
    await server.wait_closed()


@pytest.mark.parametrize("level", [logging.DEBUG, logging.ERROR])
async def test_quieted_command_lines_show_hidden_auth_at_debug_and_cost_nothing_when_off(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, level: int
) -> None:
    sanitized_log = aiosmtpd.smtp.sanitized_log
    sanitized: list[str] = []

    def counted(func: Callable[..., None], msg: str, *args: object) -> None:
        sanitized.append(msg)
        sanitized_log(func, msg, *args)

    monkeypatch.setattr(aiosmtpd.smtp, AIOSMTPD_COMMAND_LOG, counted)
    quiet_command_log()
    quieted = aiosmtpd.smtp.sanitized_log
    quiet_command_log()
    assert aiosmtpd.smtp.sanitized_log is quieted  # installed twice, wrapped once
    caplog.set_level(level, logger="mail.log")
    await _auth_line_to_aiosmtpd()
    lines = [r.getMessage() for r in caplog.records if r.name == "mail.log"]
    if level == logging.ERROR:
        assert (lines, sanitized) == ([], [])  # aiosmtpd's regex never ran
    else:
        assert any("AUTH PLAIN ********" in line for line in lines), lines
        assert any("EHLO app.example" in line for line in lines), lines
        assert not any("AGFwcABzM2NyM3Q" in line for line in lines)
        assert sanitized


def test_an_object_with_a_signature_attribute_is_answered_from_it() -> None:
    # The EHLO hook aiosmtpd inspects per session is a SignedHook: inspect must use its
    # __signature__ (PEP 362) rather than read a wrapped function's parameters.
    def hook(
        server: object, session: object, envelope: object, name: str, lines: list[str]
    ) -> None:
        del server, session, envelope, name, lines

    signed = SignedHook(hook)
    assert inspect.signature(signed) is signed.__signature__
    assert len(inspect.signature(signed).parameters) == 5


def test_each_connection_gives_the_session_the_stream_relay_reads_data_from() -> None:
    # asyncio's StreamReaderProtocol hands the stream to this callback; relay's DATA reader
    # reads self._reader and closes self._writer when the client goes away mid-DATA.
    assert issubclass(SMTP, asyncio.StreamReaderProtocol)
    source = inspect.getsource(SMTP._cb_client_connected)
    assert "self._reader = reader" in source and "self._writer = writer" in source


async def test_the_data_hook_and_envelope_helpers_relay_calls_from_its_own_data() -> None:
    assert inspect.iscoroutinefunction(SMTP._call_handler_hook)
    assert list(inspect.signature(SMTP._call_handler_hook).parameters) == [
        "self",
        "command",
        "args",
    ]
    session = SMTP(_Handler())
    assert isinstance(session._create_envelope(), aiosmtpd.smtp.Envelope)


def test_command_size_limits_and_local_part_limit_are_class_attributes() -> None:
    assert isinstance(SMTP.command_size_limits, dict)
    assert SMTP.local_part_limit == 0


def test_help_lists_commands_through_syntax_available() -> None:
    assert "self._syntax_available(method)" in inspect.getsource(SMTP.smtp_HELP)
    for verb in ("EHLO", "MAIL", "RCPT", "DATA"):
        method = getattr(RelaySMTP, f"smtp_{verb}")
        assert method.__smtp_syntax__.startswith(verb)


def test_every_named_aiosmtpd_internal_exists() -> None:
    assert [name for name in AIOSMTPD_INTERNALS if not hasattr(SMTP, name)] == []


def test_drain_helper_is_the_protocols_flow_control_wait() -> None:
    for name in AIOSMTPLIB_INTERNALS:
        helper = getattr(aiosmtplib.protocol.SMTPProtocol, name)
        assert inspect.iscoroutinefunction(helper)
        assert list(inspect.signature(helper).parameters) == ["self"]
    # It waits while the transport has paused writing, as asyncio's StreamWriter.drain().
    source = inspect.getsource(aiosmtplib.protocol.FlowControlMixin)
    assert "def pause_writing" in source and "def resume_writing" in source


class _Transport(asyncio.Transport):
    def get_extra_info(self, name: str, default: object = None) -> object:
        return default


async def test_aiosmtplibs_protocol_can_be_stood_in_for_on_its_transport() -> None:
    assert pipelining_gaps() == []
    assert set(AIOSMTPLIB_PIPELINING) >= {"transport", "data_received"}
    protocol = aiosmtplib.protocol.SMTPProtocol()
    transport = _Transport()
    protocol.connection_made(transport)
    assert protocol.transport is transport  # the one relay's intake is set on, then handed back
    assert not isinstance(protocol, asyncio.BufferedProtocol)  # replies come to data_received


async def test_aiosmtplib_still_loses_a_second_reply_that_arrives_with_the_first() -> None:
    # Why relay reads pipelined replies itself (relay.upstream.pipelining). Should this fail, a
    # new aiosmtplib may read them: relay's own reader could then go.
    protocol = aiosmtplib.protocol.SMTPProtocol()
    protocol.connection_made(_Transport())
    protocol.data_received(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n")
    assert (await protocol.read_response(timeout=1.0)).message == "2.1.0 Ok"
    with pytest.raises(aiosmtplib.SMTPTimeoutError):
        await protocol.read_response(timeout=0.05)


def test_serve_refuses_to_start_when_the_protocol_cannot_be_stood_in_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delattr(aiosmtplib.protocol.SMTPProtocol, "data_received")
    with pytest.raises(LibraryMismatch, match="SMTPProtocol.data_received"):
        check_libraries()


def test_serve_refuses_to_start_when_an_internal_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    check_libraries()
    monkeypatch.delattr(aiosmtplib.protocol.FlowControlMixin, "_drain_helper")
    with pytest.raises(LibraryMismatch, match="SMTPProtocol._drain_helper"):
        check_libraries()


def test_relay_serve_says_which_internal_is_missing_and_exits_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    setup = write_config(tmp_path / "relay", {})
    monkeypatch.delattr(SMTP, "_getaddr")
    umask = os.umask(0o022)  # main() sets relay's 077 for the process: the peers need ours back
    try:
        assert main(["--config", str(setup.config_path), "serve"]) == 1
    finally:
        os.umask(umask)
    error = capsys.readouterr().err
    assert "aiosmtpd.smtp.SMTP._getaddr" in error and "relay relies on" in error
