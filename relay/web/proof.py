"""A returning user's proof: the provider's own SMTP login accepts the password they typed."""

from __future__ import annotations

import asyncio
import logging

from relay.check.report import CheckContext, StageFailure
from relay.check.smtpstages import SmtpStages
from relay.model import Secret, User
from relay.providers.presets import Transport
from relay.tls import TlsContexts
from relay.web.identity import canonical_address
from relay.web.site import Site

logger = logging.getLogger(__name__)


def user_with_address(site: Site, address: str, provider: str | None = None) -> User | None:
    """The user whose mailbox address is address (at provider, if given); the first by login."""
    wanted = canonical_address(address)
    for user in sorted(site.store.list_users(), key=lambda found: found.login):
        if provider is not None and user.provider != provider:
            continue
        if wanted in (canonical_address(user.email), canonical_address(user.upstream_user)):
            return user
    return None


async def password_opens_mailbox(site: Site, user: User, password: Secret) -> bool:
    """Whether the provider's SMTP AUTH takes password for user's mailbox, as webmail checks."""
    provider = site.provider(user)
    if provider is None or provider.transport is Transport.GRAPH:
        return False  # Graph has no password login to check against
    context = CheckContext(site.config, user, provider, password, TlsContexts())
    smtp = SmtpStages(context)
    limit = context.connect_timeout + 3 * context.timeout
    try:
        async with asyncio.timeout(limit):
            await smtp.tls()
            await smtp.ehlo()
            await smtp.auth()
    except StageFailure as failure:
        logger.info("web.proof_failed user=%s reason=%s", user.login, failure.summary)
        return False
    except TimeoutError:
        logger.info("web.proof_failed user=%s reason=no answer within %gs", user.login, limit)
        return False
    finally:
        await smtp.close()
    return True
