"""The DSN parameters of MAIL and RCPT (RFC 3461 §4), read by relay rather than by aiosmtpd.

aiosmtpd refuses every RCPT parameter and upper-cases MAIL's, which would change ENVID's and
ORCPT's values; relay takes RET, ENVID, NOTIFY and ORCPT out of the argument before aiosmtpd
parses the rest, and keeps them on the envelope, as sent, for the spool and the provider.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from aiosmtpd.smtp import Envelope

from relay.model import EnvelopeParams, Notify, RecipientNotice
from relay.queue.staging import StagedBody
from relay.reply import Reply, dsn_parameter_problem

MAIL_DSN_KEYS = frozenset({"RET", "ENVID"})
RCPT_DSN_KEYS = frozenset({"NOTIFY", "ORCPT"})
# RFC 3461 §4: xtext is printable ASCII but "+" and "=", which stand for themselves as "+XX".
_XTEXT = re.compile(r"(?:[!-*,-<>-~]|\+[0-9A-F]{2})+")
_ADDR_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")
ENVID_LIMIT = 100  # RFC 3461 §4.4
ORCPT_LIMIT = 500  # RFC 3461 §4.2


@dataclass(frozen=True, slots=True)
class Split:
    """A MAIL or RCPT argument without its DSN parameters, and those parameters by keyword."""

    rest: str
    found: dict[str, str]


def split_dsn(arg: str, keys: frozenset[str]) -> Split | Reply:
    """Take the DSN parameters named by keys out of a MAIL/RCPT argument; a Reply if bad."""
    end = _address_end(arg)
    head, tail = arg[:end], arg[end:]
    kept: list[str] = []
    found: dict[str, str] = {}
    for token in tail.split():
        key, _, value = token.partition("=")
        keyword = key.upper()
        if keyword not in keys:
            kept.append(token)
            continue
        if keyword in found:
            # RFC 3461 §4: each parameter at most once per command.
            return dsn_parameter_problem(keyword, "given twice")
        found[keyword] = value
    return Split(" ".join([head.rstrip(), *kept]), found)


def mail_dsn(arg: str) -> tuple[str, str | None, str | None] | Reply:
    """MAIL's argument without RET and ENVID, and their values; a Reply if one is bad."""
    split = split_dsn(arg, MAIL_DSN_KEYS)
    if isinstance(split, Reply):
        return split
    given = mail_params(split.found)
    return given if isinstance(given, Reply) else (split.rest, *given)


def rcpt_dsn(arg: str) -> tuple[str, RecipientNotice] | Reply:
    """RCPT's argument without NOTIFY and ORCPT, and the notice they ask; a Reply if bad."""
    split = split_dsn(arg, RCPT_DSN_KEYS)
    if isinstance(split, Reply):
        return split
    notice = rcpt_notice(split.found)
    return notice if isinstance(notice, Reply) else (split.rest, notice)


def mail_params(found: dict[str, str]) -> tuple[str | None, str | None] | Reply:
    """(RET, ENVID) from MAIL's DSN parameters, or the reply refusing them."""
    ret = found.get("RET")
    if ret is not None and ret.upper() not in ("FULL", "HDRS"):
        return dsn_parameter_problem("RET", "must be FULL or HDRS (RFC 3461 §4.3)")
    envid = found.get("ENVID")
    if envid is not None and (len(envid) > ENVID_LIMIT or not _XTEXT.fullmatch(envid)):
        return dsn_parameter_problem("ENVID", "must be xtext of at most 100 characters")
    return (None if ret is None else ret.upper()), envid


def rcpt_notice(found: dict[str, str]) -> RecipientNotice | Reply:
    """A recipient's NOTIFY and ORCPT, or the reply refusing them."""
    notify: frozenset[Notify] = frozenset()
    if "NOTIFY" in found:
        try:
            notify = frozenset(Notify(word.upper()) for word in found["NOTIFY"].split(","))
        except ValueError:
            notify = frozenset()
        # RFC 3461 §4.1: NEVER alone, or any of SUCCESS, FAILURE, DELAY.
        if not notify or (Notify.NEVER in notify and len(notify) > 1):
            return dsn_parameter_problem(
                "NOTIFY", "must be NEVER, or SUCCESS, FAILURE and DELAY separated by commas"
            )
    orcpt = found.get("ORCPT")
    if orcpt is not None:
        addr_type, semicolon, address = orcpt.partition(";")
        if (
            not semicolon
            or len(orcpt) > ORCPT_LIMIT
            or not _ADDR_TYPE.fullmatch(addr_type)
            or not _XTEXT.fullmatch(address)
        ):
            return dsn_parameter_problem("ORCPT", "must be addr-type;xtext (RFC 3461 §4.2)")
    return RecipientNotice(notify, orcpt)


class RelayEnvelope(Envelope):
    """aiosmtpd's envelope with the DSN parameters that relay reads itself."""

    def __init__(self) -> None:
        super().__init__()
        self.ret: str | None = None
        self.envid: str | None = None
        self.notices: list[tuple[str, RecipientNotice]] = []
        # A large mail's body, staged as it arrived (relay.listener.dataread); content: its header.
        self.staged: StagedBody | None = None

    def params(self) -> EnvelopeParams:
        """What of this envelope must survive the spool and reach the provider."""
        given = tuple((r, n) for r, n in self.notices if n.notify or n.orcpt)
        return EnvelopeParams(bool(self.smtp_utf8), self.ret, self.envid, given)


def _address_end(arg: str) -> int:
    """Where the <address> of a MAIL/RCPT argument ends (its parameters follow)."""
    start = arg.find("<")
    if start < 0:
        colon = arg.find(":") + 1
        space = arg.find(" ", len(arg) - len(arg[colon:].lstrip()))
        return len(arg) if space < 0 else space
    quoted = False
    index = start + 1
    while index < len(arg):
        char = arg[index]
        if char == "\\":
            index += 2
            continue
        if char == '"':
            quoted = not quoted
        elif char == ">" and not quoted:
            return index + 1
        index += 1
    return len(arg)
