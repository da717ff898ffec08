"""What the app hears once its mail is handed over: the runner's result as one reply."""

from __future__ import annotations

from relay.queue.results import AlreadyAccepted, Handed, Queued, Refused, Spooled
from relay.reply import Reply


def answer(result: Handed) -> Reply:
    """The reply to DATA for what became of the mail."""
    if isinstance(result, Refused):
        return result.reply
    if isinstance(result, AlreadyAccepted):
        return Reply(250, "2.0.0", f"{result.message_id} already accepted; not sent twice")
    if isinstance(result, Spooled):
        return Reply(250, "2.0.0", f"Ok: queued as {result.queue_id}")
    if isinstance(result, Queued):
        reason = f"; {result.reason}" if result.reason else ""
        return Reply(250, "2.0.0", f"queued as {result.queue_id}{reason}; relay keeps trying")
    said = f", provider said: {result.provider.line}" if result.provider else ""
    refused = "; ".join(f"<{r}> {reply.line}" for r, reply in result.refused.items())
    tail = f"; refused by provider: {refused}" if refused else ""
    return Reply(250, "2.0.0", f"{result.message_id} sent{said}{tail}")
