"""The ESMTP parameters a spooled mail carries to the provider: SMTPUTF8 and DSN's.

What the app asked (EnvelopeParams, kept in the spool) is passed on only where the provider's
EHLO offers the extension: DSN parameters to a server without DSN would be refused with 555
(RFC 3461 §4), and relay's own DSNs answer for them instead (relay.queue.bounces).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from relay.errors import PermanentFailure
from relay.model import EnvelopeParams


@dataclass(frozen=True, slots=True)
class Upstream:
    """MAIL's extra parameters, RCPT's per recipient, and how addresses are encoded."""

    mail: list[str] = field(default_factory=list)
    rcpt: dict[str, list[str]] = field(default_factory=dict)
    encoding: str = "ascii"
    dsn_passed: bool = False  # the provider was given the DSN request (it will answer it)


def upstream_envelope(
    extensions: Mapping[str, str],
    where: str,
    sender: str,
    recipients: list[str],
    params: EnvelopeParams,
) -> Upstream:
    """The parameters for this server; PermanentFailure for UTF-8 addresses it cannot take."""
    mail: list[str] = []
    encoding = "ascii"
    needs_utf8 = not sender.isascii() or not all(r.isascii() for r in recipients)
    if params.smtputf8 or needs_utf8:
        if "smtputf8" in extensions:
            mail.append("SMTPUTF8")
            encoding = "utf-8"
        elif needs_utf8:
            # RFC 6531 §3.7: no downgrade of addresses; RFC 6533's X.6.7 says why.
            raise PermanentFailure(
                553,
                "5.6.7",
                f"{where} offers no SMTPUTF8, so it cannot take internationalised addresses",
            )
    if "dsn" not in extensions or not params.asks_dsn:
        return Upstream(mail, {}, encoding)
    if params.ret:
        mail.append(f"RET={params.ret}")
    if params.envid:
        mail.append(f"ENVID={params.envid}")
    rcpt: dict[str, list[str]] = {}
    for recipient, notice in params.notices:
        options = []
        if notice.notify:
            options.append("NOTIFY=" + ",".join(sorted(n.value for n in notice.notify)))
        if notice.orcpt:
            options.append(f"ORCPT={notice.orcpt}")
        rcpt[recipient] = options
    return Upstream(mail, rcpt, encoding, dsn_passed=True)
