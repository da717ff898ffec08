"""Sent copies: the plan per provider and user, folder discovery, and APPENDs to a real Dovecot."""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import imaplib
import logging
import time
import tracemalloc
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from relay.config.load import parse_config
from relay.config.model import ProviderConfig
from relay.errors import SentCopyError, SentCopyRetry
from relay.model import Secret
from relay.providers.presets import Endpoint, SentCopy, TlsMode
from relay.sent.filing import (
    FolderSource,
    SentCopyPlan,
    SentCopyResult,
    append_sent_copy,
    find_sent_folder,
    plan_sent_copy,
    retry_plan,
)
from relay.sent.imap import ImapAccount
from relay.sent.imapwire import Mailbox, encode_mailbox, parse_list, quoted
from relay.tls import TlsContexts
from tests.peers.mailpeers import MailPeers

SENT_AT = 1_700_000_000  # 2023-11-14 22:13:20 UTC, whole seconds as INTERNALDATE keeps them


# --- The plan: who files the copy ---


def provider(name: str, **settings: Any) -> ProviderConfig:
    """One provider as config.yaml would define it."""
    config = parse_config({"providers": {name: settings}}, "test.yaml", Path("."))
    return config.providers[name]


LAB = {
    "smtp": {"host": "mail.example.org", "tls": "starttls"},
    "imap": {"host": "mail.example.org", "tls": "implicit"},
}


def test_gmail_preset_skips_the_copy_because_gmail_files_its_own() -> None:
    assert plan_sent_copy(provider("agency", preset="gmail"), None) is SentCopyPlan.SKIP


def test_explicit_provider_on_auto_appends_only_if_the_copy_is_missing() -> None:
    assert plan_sent_copy(provider("lab", **LAB), None) is SentCopyPlan.APPEND_IF_MISSING


def test_never_skips_the_copy_for_a_provider_that_files_none() -> None:
    assert plan_sent_copy(provider("lab", **LAB, sent_copy="never"), None) is SentCopyPlan.SKIP
    assert plan_sent_copy(provider("lab", **LAB), SentCopy.NEVER) is SentCopyPlan.SKIP


def test_always_appends_without_searching_even_where_gmail_files_its_own() -> None:
    gmail = provider("agency", preset="gmail")
    assert plan_sent_copy(gmail, SentCopy.ALWAYS) is SentCopyPlan.APPEND
    assert plan_sent_copy(provider("lab", **LAB, sent_copy="always"), None) is SentCopyPlan.APPEND


def test_user_choice_overrides_the_providers_sent_copy() -> None:
    lab = provider("lab", **LAB, sent_copy="never")
    assert plan_sent_copy(lab, SentCopy.AUTO) is SentCopyPlan.APPEND_IF_MISSING


def test_provider_without_imap_skips_the_copy_whatever_the_user_chose() -> None:
    zoho = provider("mail", preset="zoho")
    assert zoho.imap is None
    assert plan_sent_copy(zoho, SentCopy.ALWAYS) is SentCopyPlan.SKIP


def test_a_retried_append_searches_first_as_the_lost_attempt_may_have_landed() -> None:
    assert retry_plan(SentCopyPlan.APPEND) is SentCopyPlan.APPEND_IF_MISSING
    assert retry_plan(SentCopyPlan.APPEND_IF_MISSING) is SentCopyPlan.APPEND_IF_MISSING


# --- Discovery among LIST results ---


def box(wire: str, *flags: str) -> Mailbox:
    """A mailbox as parse_list makes it."""
    line = f'({" ".join(flags)}) "." {quoted(wire)}'.encode()
    return parse_list([line])[0]


def test_special_use_sent_flag_wins_over_a_known_name() -> None:
    found = find_sent_folder([box("Sent"), box("Outbox archive", "\\Sent"), box("INBOX")])
    assert found == (box("Outbox archive", "\\Sent"), FolderSource.SPECIAL_USE)


def test_known_name_matches_ignoring_case_in_the_order_listed() -> None:
    found = find_sent_folder([box("INBOX"), box("itens enviados"), box("SENT ITEMS")])
    assert found is not None and found[0].name == "SENT ITEMS"


def test_known_name_in_modified_utf7_is_decoded_before_matching() -> None:
    found = find_sent_folder([box("INBOX"), box("&AMk-l&AOk-ments envoy&AOk-s")])
    assert found is not None
    assert (found[0].name, found[0].wire) == ("Éléments envoyés", "&AMk-l&AOk-ments envoy&AOk-s")


def test_known_name_under_an_inbox_prefix_is_found() -> None:
    found = find_sent_folder([box("INBOX"), box("INBOX.Gesendet")])
    assert found == (box("INBOX.Gesendet"), FolderSource.KNOWN_NAME)


def test_a_noselect_sent_is_passed_over_and_no_match_gives_none() -> None:
    assert find_sent_folder([box("Sent", "\\Noselect", "\\Sent"), box("Archive")]) is None


# --- Against the real Dovecot ---


def account(
    peers: MailPeers, local: str, tls: TlsMode = TlsMode.IMPLICIT, secret: str | None = None
) -> ImapAccount:
    """The IMAP account of a peers mailbox, trusting the peers' CA."""
    mailbox = peers.accounts[local]
    port = peers.imaps_port if tls is TlsMode.IMPLICIT else peers.imap_port
    return ImapAccount(
        login=local,
        endpoint=Endpoint(peers.host, port, tls),
        username=mailbox.address,
        secret=Secret(mailbox.password if secret is None else secret),
        ca_file=peers.ca_file,
    )


def mail(message_id: str, body: bytes = b"Hello from the app.\r\n") -> bytes:
    """A small CRLF message with this Message-ID."""
    return (
        f"From: app@example.org\r\nTo: bob@example.org\r\nSubject: sent copy test\r\n"
        f"Date: {email.utils.formatdate(SENT_AT)}\r\nMessage-ID: {message_id}\r\n\r\n"
    ).encode() + body


def new_id() -> str:
    return f"<{uuid.uuid4().hex}@relay.test>"


async def file_copy(
    imap: ImapAccount,
    message_id: str,
    *,
    message: bytes | None = None,
    plan: SentCopyPlan = SentCopyPlan.APPEND,
    folder_override: str | None = None,
    remembered_folder: str | None = None,
    timeout: float = 10.0,
) -> SentCopyResult:
    return await append_sent_copy(
        imap,
        mail(message_id) if message is None else message,
        message_id,
        SENT_AT,
        plan=plan,
        folder_override=folder_override,
        remembered_folder=remembered_folder,
        tls=TlsContexts(),
        timeout=timeout,
    )


@contextmanager
def logged_in(peers: MailPeers, local: str, folder: str) -> Iterator[imaplib.IMAP4_SSL]:
    """An imaplib client with folder selected read-write."""
    client = peers.imap(peers.accounts[local])
    try:
        status, data = client.select(quoted(encode_mailbox(folder)))
        assert status == "OK", data
        yield client
    finally:
        client.logout()


def copies(peers: MailPeers, local: str, folder: str, message_id: str) -> list[tuple[Any, ...]]:
    """(flags, INTERNALDATE as epoch, bytes) of each message in folder with this Message-ID."""
    with logged_in(peers, local, folder) as client:
        _, found = client.uid("SEARCH", "HEADER", "Message-ID", quoted(message_id))
        uids = found[0].split() if found and found[0] else []
        result = []
        for uid in uids:
            _, data = client.uid("FETCH", uid.decode(), "(FLAGS INTERNALDATE BODY.PEEK[])")
            head, body = data[0]
            internal = imaplib.Internaldate2tuple(head)
            assert internal is not None
            result.append((imaplib.ParseFlags(head), time.mktime(internal), body))
        return result


def remove_copies(peers: MailPeers, local: str, folder: str, message_id: str) -> None:
    """Expunge what a test filed in a shared mailbox, so other tests find it as it was."""
    with logged_in(peers, local, folder) as client:
        _, found = client.uid("SEARCH", "HEADER", "Message-ID", quoted(message_id))
        if found and found[0]:
            client.uid("STORE", b",".join(found[0].split()).decode(), "+FLAGS", "(\\Deleted)")
            client.expunge()


def delete_folder(peers: MailPeers, local: str, folder: str) -> None:
    client = peers.imap(peers.accounts[local])
    try:
        status, data = client.delete(quoted(encode_mailbox(folder)))
        assert status == "OK", data
    finally:
        client.logout()


@pytest.mark.peers
async def test_copy_lands_in_alices_special_use_sent_as_seen_with_the_given_internaldate(
    mail_peers: MailPeers,
) -> None:
    message_id = new_id()
    try:
        result = await file_copy(account(mail_peers, "alice"), message_id)
        assert (result.folder, result.found_by) == ("Sent", FolderSource.SPECIAL_USE)
        assert result.appended and not result.created_folder
        [(flags, internal_date, body)] = copies(mail_peers, "alice", "Sent", message_id)
        assert b"\\Seen" in flags
        assert internal_date == SENT_AT
        assert body == mail(message_id)
    finally:
        remove_copies(mail_peers, "alice", "Sent", message_id)


@pytest.mark.peers
async def test_carol_without_special_use_gets_the_copy_in_itens_enviados(
    mail_peers: MailPeers,
) -> None:
    message_id = new_id()
    try:
        result = await file_copy(account(mail_peers, "carol"), message_id)
        assert (result.folder, result.found_by) == ("Itens Enviados", FolderSource.KNOWN_NAME)
        assert len(copies(mail_peers, "carol", "Itens Enviados", message_id)) == 1
    finally:
        remove_copies(mail_peers, "carol", "Itens Enviados", message_id)


@pytest.mark.peers
async def test_folder_override_wins_over_discovery_and_is_created_in_modified_utf7(
    mail_peers: MailPeers,
) -> None:
    message_id, folder = new_id(), f"Envoyés {uuid.uuid4().hex[:6]}"
    try:
        result = await file_copy(
            account(mail_peers, "bob"), message_id, folder_override=folder, remembered_folder="Sent"
        )
        assert (result.folder, result.found_by) == (folder, FolderSource.OVERRIDE)
        assert result.created_folder and result.folder_to_remember is None
        listed = [name for _, name in mail_peers.list_mailboxes(mail_peers.accounts["bob"])]
        assert encode_mailbox(folder) in listed
        assert encode_mailbox(folder).startswith("Envoy&AOk-s ")
        assert len(copies(mail_peers, "bob", folder, message_id)) == 1
        assert copies(mail_peers, "bob", "Sent", message_id) == []
    finally:
        delete_folder(mail_peers, "bob", folder)


@pytest.mark.peers
async def test_remembered_folder_is_used_and_found_again_once_deleted(
    mail_peers: MailPeers,
) -> None:
    bob, folder = account(mail_peers, "bob"), f"Old Sent {uuid.uuid4().hex[:6]}"
    first, second = new_id(), new_id()
    client = mail_peers.imap(mail_peers.accounts["bob"])
    assert client.create(quoted(folder))[0] == "OK"
    client.logout()
    try:
        kept = await file_copy(bob, first, remembered_folder=folder)
        assert (kept.folder, kept.found_by) == (folder, FolderSource.REMEMBERED)
        delete_folder(mail_peers, "bob", folder)
        again = await file_copy(bob, second, remembered_folder=folder)
        assert (again.folder, again.found_by) == ("Sent", FolderSource.SPECIAL_USE)
        assert again.folder_to_remember == "Sent" and not again.created_folder
        assert len(copies(mail_peers, "bob", "Sent", second)) == 1
    finally:
        remove_copies(mail_peers, "bob", "Sent", second)


@pytest.mark.peers
async def test_append_if_missing_twice_with_one_message_id_files_one_copy(
    mail_peers: MailPeers,
) -> None:
    bob, message_id = account(mail_peers, "bob", TlsMode.STARTTLS), new_id()
    try:
        first = await file_copy(bob, message_id, plan=SentCopyPlan.APPEND_IF_MISSING)
        second = await file_copy(bob, message_id, plan=SentCopyPlan.APPEND_IF_MISSING)
        assert first.appended and not second.appended
        assert second.folder == "Sent"
        assert len(copies(mail_peers, "bob", "Sent", message_id)) == 1
    finally:
        remove_copies(mail_peers, "bob", "Sent", message_id)


@pytest.mark.peers
async def test_wrong_password_fails_after_fix_with_dovecots_reply_and_never_the_secret(
    mail_peers: MailPeers, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "not-alices-password-" + uuid.uuid4().hex
    with pytest.raises(SentCopyError) as caught:
        await file_copy(account(mail_peers, "alice", secret=wrong), new_id())
    error = caught.value
    assert (error.step, error.code, error.retry) == (
        "login",
        "AUTHENTICATIONFAILED",
        SentCopyRetry.AFTER_FIX,
    )
    assert not error.temporary
    assert "[AUTHENTICATIONFAILED] Authentication failed." in error.reply
    assert wrong not in str(error) and wrong not in repr(error.args)
    assert wrong not in caplog.text and "sent.failed user=alice" in caplog.text


@pytest.mark.peers
async def test_certificate_from_a_ca_relay_does_not_trust_is_refused(
    mail_peers: MailPeers,
) -> None:
    untrusting = dataclasses.replace(account(mail_peers, "alice"), ca_file=None)
    with pytest.raises(SentCopyError) as caught:
        await file_copy(untrusting, new_id())
    assert caught.value.step == "connect" and caught.value.retry is SentCopyRetry.AFTER_FIX
    assert "certificate not accepted" in caught.value.reply


@pytest.mark.peers
async def test_stopped_imap_server_gives_a_temporary_error(private_mail_peers: MailPeers) -> None:
    alice = account(private_mail_peers, "alice")
    private_mail_peers.stop_imap()
    with pytest.raises(SentCopyError) as caught:
        await file_copy(alice, new_id())
    assert caught.value.temporary and caught.value.step == "connect"
    assert "refused" in caught.value.reply.lower()


@pytest.mark.peers
async def test_account_without_sent_or_a_known_name_gets_a_created_sent_folder(
    private_mail_peers: MailPeers, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="relay.sent")
    peers = private_mail_peers
    without_default_folders(peers, "dave")
    assert peers.list_mailboxes(peers.accounts["dave"]) == [("", "INBOX")]
    message_id = new_id()
    result = await file_copy(account(peers, "dave"), message_id)
    assert (result.folder, result.found_by) == ("Sent", FolderSource.CREATED)
    assert result.created_folder and result.folder_to_remember == "Sent"
    assert len(copies(peers, "dave", "Sent", message_id)) == 1
    assert "sent.folder_created user=dave folder='Sent' reason=no \\Sent flag" in caplog.text


def without_default_folders(peers: MailPeers, local: str) -> None:
    """Stop Dovecot auto-creating Sent, Drafts and Trash for one user (a fresh account)."""
    # The peers' passwd-file; Dovecot reads userdb fields from it again when it changes.
    users = peers.workdir / "users"
    address = peers.accounts[local].address
    off = " ".join(
        f"userdb_namespace/inbox/mailbox/{m}/auto=no" for m in ("Sent", "Drafts", "Trash")
    )
    lines = [
        line + off if line.startswith(f"{address}:") else line
        for line in users.read_text().splitlines()
    ]
    users.write_text("".join(f"{line}\n" for line in lines))


@pytest.mark.peers
async def test_20_mb_message_is_filed_byte_for_byte_within_one_extra_copy_of_memory(
    mail_peers: MailPeers,
) -> None:
    message_id = new_id()
    line = b"x" * 998 + b"\r\n"
    message = mail(message_id, line * (20 * 1024 * 1024 // len(line)))
    tracemalloc.start()
    try:
        result = await file_copy(account(mail_peers, "alice"), message_id, message=message)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    try:
        print(f"sent copy of {len(message)} bytes: tracemalloc peak {peak / 2**20:.2f} MiB")
        assert result.appended
        assert peak < len(message), f"peak {peak} bytes for a {len(message)}-byte message"
        [(_, _, body)] = copies(mail_peers, "alice", "Sent", message_id)
        assert body == message
    finally:
        remove_copies(mail_peers, "alice", "Sent", message_id)


# --- Timeouts and cancellation, against a server that never says a word ---


@pytest_asyncio.fixture
async def silent_server() -> AsyncIterator[tuple[int, asyncio.Event]]:
    """A TCP port that accepts and never greets; the event is set when a client hangs up."""
    hung_up = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        hung_up.set()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], hung_up
    finally:
        server.close()
        await server.wait_closed()


def silent_account(port: int) -> ImapAccount:
    return ImapAccount("erin", Endpoint("127.0.0.1", port, TlsMode.STARTTLS), "erin", Secret("pw"))


async def test_server_that_never_greets_times_out_as_a_temporary_error(
    silent_server: tuple[int, asyncio.Event],
) -> None:
    port, _ = silent_server
    started = time.monotonic()
    with pytest.raises(SentCopyError) as caught:
        await file_copy(silent_account(port), new_id(), timeout=0.3)
    assert caught.value.temporary and caught.value.step == "connect"
    assert "no answer in time" in caught.value.reply
    assert time.monotonic() - started < 5


async def test_cancelling_the_copy_hangs_up_at_once(
    silent_server: tuple[int, asyncio.Event],
) -> None:
    port, hung_up = silent_server
    task = asyncio.create_task(file_copy(silent_account(port), new_id(), timeout=30))
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(hung_up.wait(), 5)
