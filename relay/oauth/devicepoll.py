"""A device authorization waited for one poll at a time, for callers that cannot loop (web pages).

relay.oauth.client's poll_device sleeps between requests in one coroutine; a page instead asks
again and again, so the pace the provider set (RFC 8628 §3.5) is kept here, between requests.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from relay.errors import OAuthError
from relay.model import OAuthClient
from relay.oauth.client import SLOW_DOWN_STEP, DeviceAuthorization, TokenEndpoint, TokenGrant


@dataclass(slots=True)
class DevicePoll:
    """A device authorization being waited for, and when the token endpoint may be asked next."""

    device: DeviceAuthorization
    interval: float  # seconds between requests; slow_down makes it longer for good
    next_poll: float  # time.time() before which the provider is not asked again

    @classmethod
    def started(cls, device: DeviceAuthorization, now: float | None = None) -> DevicePoll:
        """The wait for a device authorization just granted: the first poll after one interval."""
        now = time.time() if now is None else now
        return cls(device, device.interval, now + device.interval)

    def wait(self, now: float | None = None) -> float:
        """Seconds until the next poll may go to the provider; 0 when it may now."""
        now = time.time() if now is None else now
        return max(0.0, self.next_poll - now)


async def poll_once(
    endpoint: TokenEndpoint, client: OAuthClient, poll: DevicePoll, now: float | None = None
) -> TokenGrant | None:
    """The tokens once the user approved; None while pending; OAuthError if refused or expired."""
    now = time.time() if now is None else now
    if now >= poll.device.expires_at:
        raise OAuthError("expired_token", "the code expired before it was used")
    if now < poll.next_poll:
        return None
    # Set before the request: a second page request meanwhile must not poll as well.
    poll.next_poll = now + poll.interval
    try:
        return await endpoint.device_token(client, poll.device)
    except OAuthError as error:
        if error.error == "slow_down":
            # RFC 8628 §3.5: this and every later request waits 5 s longer.
            poll.interval += SLOW_DOWN_STEP
            poll.next_poll = time.time() + poll.interval
        elif error.error != "authorization_pending":
            raise
    return None
