"""Log output: text and JSON lines, journald priorities, and secrets that never get out."""

from __future__ import annotations

import io
import json
import logging
import os
import re
from base64 import b64encode
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.model import Secret
from relay.ops.logs import (
    RedactingFilter,
    TextFormatter,
    configure_logging,
    parse_fields,
    syslog_priority,
)

SECRET = "Zq8vN2pLx4RtYw9Kc3Hm7Bd5Fs1Gj6Ua"
APP_PASSWORD = "abcd efgh ijkl mnop"
PLAIN_BLOB = b64encode(b"\0alice\0" + SECRET.encode()).decode()

logger = logging.getLogger("relay.test_logs")


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """Put the root logger back as pytest had it, whatever configure_logging did."""
    root, mail = logging.getLogger(), logging.getLogger("mail.log")
    handlers, level, mail_level = list(root.handlers), root.level, mail.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        mail.setLevel(mail_level)


def configured(fmt: str = "text", environ: dict[str, str] | None = None) -> io.StringIO:
    """A stream that relay's log goes to, configured at debug level."""
    stream = io.StringIO()
    configure_logging("debug", fmt, environ or {}, stream=stream)
    return stream


def redactor_on(stream: io.StringIO, fmt: str = "text") -> RedactingFilter:
    return configure_logging("debug", fmt, {}, stream=stream)


# Formats.


def test_text_lines_have_time_level_logger_and_message() -> None:
    stream = configured()
    logger.info("relay.listening address=%s port=%d", "127.0.0.1", 2525)
    line = stream.getvalue()
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO relay\.test_logs "
        r"relay\.listening address=127\.0\.0\.1 port=2525\n",
        line,
    ), line


def test_json_lines_parse_one_by_one_and_carry_the_fields() -> None:
    stream = configured("json")
    logger.info("relay.listening address=%s port=%d", "127.0.0.1", 2525)
    logger.warning("delivery.deferred msg_id=%s reason=%r attempt=%d", "<a@b>", "421 it's busy", 2)
    logger.error("queue.bounce_dropped id=%s reason=a bounce is never bounced", "q1")
    first, second, third = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["level"] == "info" and first["logger"] == "relay.test_logs"
    assert first["event"] == "relay.listening"
    assert first["message"] == "relay.listening address=127.0.0.1 port=2525"
    assert first["fields"] == {"address": "127.0.0.1", "port": "2525"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", first["time"])
    assert second["level"] == "warning" and second["event"] == "delivery.deferred"
    assert second["fields"] == {"msg_id": "<a@b>", "reason": "421 it's busy", "attempt": "2"}
    assert third["fields"] == {"id": "q1", "reason": "a bounce is never bounced"}


def test_json_exception_is_a_field_and_the_line_stays_one_line() -> None:
    stream = configured("json")
    try:
        raise RuntimeError("spool is gone")
    except RuntimeError:
        logger.exception("queue.attempt_crashed id=%s", "q1")
    (line,) = stream.getvalue().splitlines()
    document = json.loads(line)
    assert document["event"] == "queue.attempt_crashed"
    assert document["exception"].startswith("Traceback (most recent call last):")
    assert "RuntimeError: spool is gone" in document["exception"]


@pytest.mark.parametrize(
    ("message", "fields"),
    [
        ("a=1 b=two", {"a": "1", "b": "two"}),
        ("reply='250 2.0.0 ok id=5' next=x", {"reply": "250 2.0.0 ok id=5", "next": "x"}),
        ('reason="it\'s \\"busy\\"" n=1', {"reason": 'it\'s "busy"', "n": "1"}),
        ("line=b'EHLO x\\r\\n' n=1", {"line": "b'EHLO x\\r\\n'", "n": "1"}),
        ("url=https://h/?a=b c=d", {"url": "https://h/?a=b", "c": "d"}),
        ("reason='unterminated n=1", {"reason": "'unterminated", "n": "1"}),
        ("free words only", {}),
        ("empty= n=1", {"empty": "", "n": "1"}),
    ],
)
def test_fields_parse_quoted_bare_and_broken_values(message: str, fields: dict[str, str]) -> None:
    assert parse_fields(message) == fields


def test_journald_lines_have_priority_prefixes_and_no_time(tmp_path: Path) -> None:
    with (tmp_path / "journal").open("w+") as journal:
        status = os.fstat(journal.fileno())
        environ = {"JOURNAL_STREAM": f"{status.st_dev}:{status.st_ino}"}
        configure_logging("debug", "text", environ, stream=journal)
        logger.debug("upstream.connected where=%s", "smtp.example.org:465")
        logger.info("relay.stopped")
        logger.warning("relay.force_stop sessions=%d", 1)
        try:
            raise OSError("disk full")
        except OSError:
            logger.exception("queue.attempt_crashed id=q1")
        journal.seek(0)
        lines = journal.read().splitlines()
    assert lines[:3] == [
        "<7>DEBUG relay.test_logs upstream.connected where=smtp.example.org:465",
        "<6>INFO relay.test_logs relay.stopped",
        "<4>WARNING relay.test_logs relay.force_stop sessions=1",
    ]
    assert lines[3] == "<3>ERROR relay.test_logs queue.attempt_crashed id=q1"
    assert all(line.startswith("<3>") for line in lines[3:])
    assert lines[-1] == "<3>OSError: disk full"


def test_journald_json_lines_keep_pure_json_after_the_prefix(tmp_path: Path) -> None:
    with (tmp_path / "journal").open("w+") as journal:
        status = os.fstat(journal.fileno())
        environ = {"JOURNAL_STREAM": f"{status.st_dev}:{status.st_ino}"}
        configure_logging("info", "json", environ, stream=journal)
        logger.error("queue.disk_low size=%d", 10)
        journal.seek(0)
        line = journal.read().rstrip("\n")
    assert line.startswith("<3>{")
    assert json.loads(line.removeprefix("<3>"))["fields"] == {"size": "10"}


def test_inherited_journal_stream_for_another_fd_keeps_plain_text() -> None:
    stream = configured(environ={"JOURNAL_STREAM": "8:123456"})
    logger.info("relay.stopped")
    assert not stream.getvalue().startswith("<")
    assert re.match(r"\d{4}-", stream.getvalue())


def test_newline_in_a_message_cannot_forge_a_second_line() -> None:
    stream = configured()
    logger.info("delivery.refused reply=%s", "550 no\n2026-01-01 00:00:00,000 INFO fake")
    (line,) = stream.getvalue().splitlines()
    assert line.endswith("reply=550 no\\n2026-01-01 00:00:00,000 INFO fake")


def test_calling_again_replaces_the_handler_instead_of_doubling_lines() -> None:
    first, second = io.StringIO(), io.StringIO()
    redactor = configure_logging("info", "text", {}, stream=first)
    assert configure_logging("info", "json", {}, stream=second, redactor=redactor) is redactor
    logger.info("relay.reloaded")
    assert first.getvalue() == ""
    assert json.loads(second.getvalue())["event"] == "relay.reloaded"


def test_level_applies_and_aiosmtpd_chatter_is_silenced() -> None:
    stream = io.StringIO()
    configure_logging("warning", "text", {}, stream=stream)
    logger.info("relay.listening port=1")
    logging.getLogger("mail.log").warning("('127.0.0.1', 5555) EOF received")
    logger.warning("relay.force_stop sessions=1")
    assert stream.getvalue().splitlines()[0].endswith("relay.force_stop sessions=1")
    assert len(stream.getvalue().splitlines()) == 1


@pytest.mark.parametrize(
    ("levelno", "priority"),
    [(logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6), (5, 7)],
)
def test_levels_map_to_sd_daemon_priorities(levelno: int, priority: int) -> None:
    assert syslog_priority(levelno) == priority


# Redaction.


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_registered_secret_never_appears_in_message_or_traceback(fmt: str) -> None:
    stream = io.StringIO()
    redactor = redactor_on(stream, fmt)
    redactor.register(Secret(SECRET))
    redactor.register(APP_PASSWORD)
    logger.info("upstream.auth user=%s pass=%s spaced=%r", "alice", SECRET, APP_PASSWORD)
    try:
        try:
            raise KeyError(f"no such key {SECRET}")
        except KeyError as error:
            raise ValueError(f"login failed with {APP_PASSWORD!r}") from error
    except ValueError:
        logger.exception("upstream.crashed detail=%s", f"x{SECRET}y")
    output = stream.getvalue()
    assert SECRET not in output and APP_PASSWORD not in output
    assert "pass=***" in output and "x***y" in output
    assert "ValueError: login failed with '***'" in output.replace('\\"', '"').replace("\\n", "\n")


def test_registered_secret_is_found_in_its_repr_escaped_form() -> None:
    stream = io.StringIO()
    tricky = "back\\slash\tand tab"
    redactor_on(stream).register(tricky)
    logger.info("x value=%r bytes=%r", tricky, tricky.encode())
    assert stream.getvalue().rstrip("\n").endswith("x value='***' bytes=b'***'")


def test_auth_arguments_and_continuation_lines_are_redacted() -> None:
    stream = configured()
    logger.debug("%r >> %r", ("127.0.0.1", 5), f"AUTH PLAIN {PLAIN_BLOB}\r\n".encode())
    logger.debug("client sent: auth login %s", b64encode(b"alice").decode())
    logger.debug("%r >> %r", ("127.0.0.1", 5), b64encode(SECRET.encode()) + b"\r\n")
    logger.debug("%s", b64encode(b"\0alice\0pw").decode())
    logger.debug("xoauth2 AUTH XOAUTH2 %s", "dXNlcj1hAWF1dGg9QmVhcmVyIHh5egEB")
    logger.debug("header Authorization: Bearer ya29.a0AfH6SMBx")
    output = stream.getvalue()
    for leaked in (PLAIN_BLOB, b64encode(SECRET.encode()).decode(), "YWxpY2U=", "ya29."):
        assert leaked not in output
    lines = output.splitlines()
    assert lines[0].endswith(">> b'AUTH PLAIN ***\\r\\n'")
    assert lines[1].endswith("client sent: auth login ***")
    assert lines[2].endswith(">> b'***\\r\\n'")
    assert lines[3].endswith(" ***")
    assert lines[4].endswith("AUTH XOAUTH2 ***")
    assert lines[5].endswith("Bearer ***")


def test_protocol_verbs_and_words_are_not_mistaken_for_base64() -> None:
    stream = configured()
    logger.debug("%r >> %r", ("127.0.0.1", 5), b"QUIT\r\n")
    logger.debug("Done")
    logger.debug("relay.stopped")
    assert stream.getvalue().splitlines()[0].endswith(">> b'QUIT\\r\\n'")
    assert stream.getvalue().splitlines()[1].endswith(" Done")


@pytest.mark.parametrize(
    ("message", "shown"),
    [
        ("user.add login=alice password=hunter2 ok", "user.add login=alice password=*** ok"),
        ("oauth refresh_token='1//0g a b' n=1", "oauth refresh_token=*** n=1"),
        ("cfg client_secret=Secret('***')", "cfg client_secret=***"),
        ("dump {'login': 'a', 'password': 'p w'}", "dump {'login': 'a', 'password': '***'}"),
        ('json {"access_token": "abc", "n": 1}', 'json {"access_token": \'***\', "n": 1}'),
        ("auth.failed login='bob' reason=bad secret", "auth.failed login='bob' reason=bad secret"),
        # Letters that IGNORECASE matches although they are not the ASCII ones (long s, dotless
        # i, Kelvin sign): the cheap test before each pattern must let these through too.
        ("x PAſSWORD=hunter2", "x PAſSWORD=***"),
        ("x credentıal=abc", "x credentıal=***"),
        ("x to\u212aen=abc", "x to\u212aen=***"),
        ("x auth xoauth2 dXNlcj1h", "x auth xoauth2 ***"),
    ],
)
def test_password_secret_and_token_fields_are_redacted(message: str, shown: str) -> None:
    assert RedactingFilter().redact(message) == shown


def test_exc_text_already_formatted_by_another_handler_is_redacted_too() -> None:
    redactor = RedactingFilter()
    redactor.register(SECRET)
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "boom", None, None)
    record.exc_text = f"Traceback ...\nValueError: {SECRET}"
    record.stack_info = f"Stack (most recent call last):\n  {SECRET}"
    assert redactor.filter(record)
    assert record.exc_text == "Traceback ...\nValueError: ***"
    assert record.stack_info == "Stack (most recent call last):\n  ***"


def test_a_broken_format_string_is_redacted_not_raised() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "odd a=%s b=%s", (SECRET,), None)
    redactor = RedactingFilter()
    redactor.register(SECRET)
    assert redactor.filter(record)
    assert record.getMessage() == "odd a=%s b=%s (log arguments did not fit the format)"


def test_filter_keeps_only_digests_and_does_not_show_them() -> None:
    redactor = RedactingFilter()
    redactor.register(SECRET)
    redactor.register("")
    assert repr(redactor) == "RedactingFilter(registered=1)"
    assert all(len(digest) == 16 for digest in redactor._digests)
    assert SECRET.encode() not in b"".join(redactor._digests)
    assert redactor.redact(f"a {SECRET} b {SECRET}{SECRET}") == "a *** b ******"


@pytest.mark.parametrize("others", [(), ("tiny",), ("Ab3xYz9Q",), (SECRET, APP_PASSWORD)])
@pytest.mark.parametrize("length", [8, 9, 16, 23, 24, 25, 60])
def test_a_secret_is_found_at_every_offset_whatever_else_is_registered(
    length: int, others: tuple[str, ...]
) -> None:
    # The first pass samples one window in every few bytes: none may fall between two samples.
    secret = (SECRET * 2)[:length]
    redactor = RedactingFilter()
    for other in others:
        redactor.register(other)
    redactor.register(secret)
    for offset in range(0, 40):
        for tail in ("", " x", "." * 17):
            text = "~" * offset + secret + tail
            assert redactor.redact(text) == "~" * offset + "***" + tail


# Control characters and Unicode line separators (issue 21, item 8).

FORGED = "\x1b[2K\r2026-01-01 00:00:00,000 INFO relay.server auth.ok session=x login=bob"


@pytest.mark.parametrize(
    ("char", "shown"),
    [
        ("\x1b", "\\x1b"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
        ("\x85", "\\x85"),
        ("\x00", "\\x00"),
        ("\x07", "\\x07"),
        ("\x7f", "\\x7f"),
        ("\x9b", "\\x9b"),
        ("\t", "\\t"),
        ("\v", "\\x0b"),
        ("\f", "\\x0c"),
        ("\x1c", "\\x1c"),
        ("\u202e", "\\u202e"),
    ],
    ids=[
        "esc",
        "u2028",
        "u2029",
        "nel",
        "nul",
        "bel",
        "del",
        "csi",
        "tab",
        "vt",
        "ff",
        "fs",
        "rlo",
    ],
)
def test_control_or_separator_in_a_field_value_is_escaped_on_one_text_line(
    char: str, shown: str
) -> None:
    stream = configured()
    logger.info("message.reply user=alice msg_id=%s rcpts=1", f"<a{char}b@app>")
    output = stream.getvalue()
    assert output.count("\n") == 1 and output.endswith("\n")
    (line,) = output.splitlines()  # str.splitlines breaks at U+2028, U+0085, FS, VT, FF too
    assert line.endswith(f"message.reply user=alice msg_id=<a{shown}b@app> rcpts=1")
    assert char not in line


def test_esc_and_u2028_in_a_message_id_cannot_forge_an_auth_line() -> None:
    stream = configured()
    logger.info("message.reply user=alice msg_id=%s", f"<x@app>\u2028{FORGED}")
    (line,) = stream.getvalue().splitlines()
    assert "\x1b" not in line and "\u2028" not in line and "\r" not in line
    assert line.endswith(
        "msg_id=<x@app>\\u2028\\x1b[2K\\r2026-01-01 00:00:00,000 INFO "
        "relay.server auth.ok session=x login=bob"
    )


def test_traceback_keeps_its_line_breaks_but_not_its_escape_sequences() -> None:
    stream = configured()
    try:
        raise ValueError("bad id <a\x1b[31m@app>\u2028x")
    except ValueError:
        logger.exception("queue.job_crashed id=q1")
    output = stream.getvalue()
    assert "\x1b" not in output and "\u2028" not in output
    assert output.splitlines()[0].endswith("queue.job_crashed id=q1")
    assert output.splitlines()[-1] == "ValueError: bad id <a\\x1b[31m@app>\\u2028x"


def test_json_lines_stay_one_line_with_esc_and_u2028_and_keep_the_value() -> None:
    stream = configured("json")
    logger.info("message.reply msg_id=%s rcpts=1", "<a\x1b\u2028b@app>")
    raw = stream.getvalue()
    assert "\x1b" not in raw and "\u2028" not in raw
    (line,) = raw.splitlines()
    assert json.loads(line)["fields"] == {"msg_id": "<a\x1b\u2028b@app>", "rcpts": "1"}


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_secret_next_to_control_characters_is_still_redacted(fmt: str) -> None:
    stream = io.StringIO()
    redactor_on(stream, fmt).register(SECRET)
    logger.info("upstream.auth detail=%s", f"\x1b{SECRET}\u2028{SECRET}\x85")
    logger.info("upstream.auth user=alice password=%s", f"{SECRET}\x1b")
    output = stream.getvalue()
    assert SECRET not in output
    assert len(output.splitlines()) == 2
    if fmt == "text":
        assert output.splitlines()[0].endswith("detail=\\x1b***\\u2028***\\x85")
        assert output.splitlines()[1].endswith("password=***")


def test_each_text_line_is_stamped_with_its_own_time_to_the_millisecond() -> None:
    formatter, plain = TextFormatter(journald=False), logging.Formatter()
    records = [logging.makeLogRecord({"msg": "x", "created": created}) for created in STAMPS]
    for record in records:
        record.msecs = int((record.created - int(record.created)) * 1000)
    assert [formatter.formatTime(r) for r in records] == [plain.formatTime(r) for r in records]


# Within one second, in the next, back to an earlier one (a thread's record formatted late).
STAMPS = [1764763200.001, 1764763200.999, 1764763201.5, 1764763200.25, 1764849600.0]
