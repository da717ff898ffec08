"""Delivery status notifications (RFC 3464) telling a sender what became of their mail."""

from __future__ import annotations

import email.utils
import secrets

from relay.message import split_header
from relay.model import NO_PARAMS, EnvelopeParams, xtext_decode
from relay.reply import Reply

REPORT_BOUNDARY_PREFIX = "relay-dsn-"


def build_dsn(
    *,
    reporting_host: str,
    user_email: str,
    original_sender: str,
    original_header: bytes,
    received_at: float,
    now: float,
    remote: str,
    failed: dict[str, Reply],
    delayed: dict[str, Reply] | None = None,
    resent_in_doubt: int = 0,
    params: EnvelopeParams = NO_PARAMS,
    original: bytes | None = None,
) -> bytes:
    """A multipart/report DSN for failed (and, for a warning, delayed) recipients.

    original: the whole message, returned when the app asked RET=FULL (RFC 3461 §4.3);
    otherwise only its header is.
    """
    delayed = delayed or {}
    domain = user_email.rpartition("@")[2]
    boundary = f"{REPORT_BOUNDARY_PREFIX}{secrets.token_hex(12)}"
    subject = (
        "Undelivered Mail Returned to Sender" if failed else "Delayed Mail (still being retried)"
    )
    header = [
        # Sent through the user's own account, so it must come from the user's own address.
        f"From: {email.utils.formataddr(('Mail Delivery System (relay)', user_email))}",
        f"To: {original_sender}",
        f"Subject: {subject}",
        f"Date: {email.utils.formatdate(now, localtime=True)}",
        f"Message-ID: {email.utils.make_msgid(domain=domain)}",
        "Auto-Submitted: auto-replied",  # RFC 3834: no auto-responder should answer this
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
    ]
    parts = [
        "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        + _human_text(reporting_host, failed, delayed, resent_in_doubt),
        "Content-Type: message/delivery-status\r\n\r\n"
        + _delivery_status(reporting_host, received_at, now, remote, failed, delayed, params),
    ]
    returned = (
        b"Content-Type: message/rfc822\r\n\r\n" + original
        if original is not None and params.ret == "FULL"
        else ("Content-Type: text/rfc822-headers\r\n\r\n" + _header_text(original_header)).encode()
    )
    body = "".join(f"--{boundary}\r\n{part}\r\n" for part in parts).encode()
    body += f"--{boundary}\r\n".encode() + returned + f"\r\n--{boundary}--\r\n".encode()
    return ("\r\n".join(header) + "\r\n\r\n").encode() + body


def _human_text(
    host: str, failed: dict[str, Reply], delayed: dict[str, Reply], resent_in_doubt: int
) -> str:
    lines = [f"This is the mail relay at {host}.", ""]
    if failed:
        lines += ["Your message could not be delivered to these recipients:", ""]
        lines += [f"  <{rcpt}>: {reply.line}" for rcpt, reply in failed.items()]
        lines += [
            "",
            "The provider's reply is quoted after each address. Nothing more will be tried.",
        ]
    if delayed:
        lines += ["Your message has not yet been delivered to these recipients:", ""]
        lines += [f"  <{rcpt}>: {reply.line}" for rcpt, reply in delayed.items()]
        lines += ["", "relay keeps trying; you do not need to send it again."]
    if resent_in_doubt:
        times = "once more" if resent_in_doubt == 1 else f"{resent_in_doubt} more times"
        lines += [
            "",
            f"relay sent this message {times} after an attempt whose answer never came back;",
            "some recipients may have received it twice.",
        ]
    return "\r\n".join(lines) + "\r\n"


def _delivery_status(
    host: str,
    received_at: float,
    now: float,
    remote: str,
    failed: dict[str, Reply],
    delayed: dict[str, Reply],
    params: EnvelopeParams,
) -> str:
    # RFC 3464 §2.2.1: the ENVID the app gave, as it gave it (xtext).
    envid = f"Original-Envelope-Id: {params.envid}\r\n" if params.envid else ""
    blocks = [
        f"Reporting-MTA: dns; {host}\r\n{envid}"
        f"Arrival-Date: {email.utils.formatdate(received_at, localtime=True)}\r\n"
    ]
    for action, recipients in (("failed", failed), ("delayed", delayed)):
        for rcpt, reply in recipients.items():
            orcpt = params.notice(rcpt).orcpt
            # RFC 3464 §2.3.1: ORCPT's address, xtext decoded.
            original_rcpt = (
                f"Original-Recipient: {_orcpt_field(orcpt)}\r\n" if orcpt is not None else ""
            )
            blocks.append(
                f"{original_rcpt}Final-Recipient: rfc822; {rcpt}\r\n"
                f"Action: {action}\r\n"
                f"Status: {reply.status('5.0.0' if action == 'failed' else '4.0.0')}\r\n"
                f"Remote-MTA: dns; {remote}\r\n"
                f"Diagnostic-Code: smtp; {reply.line}\r\n"
                f"Last-Attempt-Date: {email.utils.formatdate(now, localtime=True)}\r\n"
            )
    return "\r\n".join(blocks)


def _header_text(header: bytes) -> str:
    fields, _ = split_header(header + b"\r\n")
    return "".join(f.decode("utf-8", "replace") + "\r\n" for f in fields)


def _orcpt_field(orcpt: str) -> str:
    addr_type, _, address = orcpt.partition(";")
    return f"{addr_type}; {xtext_decode(address)}"
