"""Reading a provider's replies: what the app hears when the provider refuses."""

from __future__ import annotations

import pytest

from relay.reply import Reply
from relay.upstream.replies import refusal_reply


@pytest.mark.parametrize(
    ("replies", "expected_start"),
    [
        ({"a@x.org": "550 5.1.1 no such user"}, "550 5.1.1 provider refused every recipient"),
        # 571 is no answer to DATA (RFC 5321 §4.3.2): the app hears 554.
        ({"a@x.org": "571 5.7.1 denied"}, "554 5.7.1 provider refused every recipient"),
        ({"a@x.org": "553 relaying denied"}, "553 5.0.0 provider refused every recipient"),
        # An enhanced code of another class than the reply's is not the reply's own.
        ({"a@x.org": "550 4.2.2 mailbox full"}, "550 5.0.0 provider refused every recipient"),
    ],
)
def test_a_refusal_of_every_recipient_becomes_one_5xx_with_each_reply(
    replies: dict[str, str], expected_start: str
) -> None:
    reply = refusal_reply({to: Reply.parse(said) for to, said in replies.items()}).line
    assert reply.startswith(expected_start)
    assert reply.endswith(f"<a@x.org> {replies['a@x.org']}")


def test_each_refused_recipient_is_named_in_the_reply() -> None:
    gone, full = Reply(550, "5.1.1", "gone"), Reply(552, "5.2.2", "full")
    reply = refusal_reply({"a@x.org": gone, "b@x.org": full}).line
    assert reply == (
        "550 5.1.1 provider refused every recipient: <a@x.org> 550 5.1.1 gone; "
        "<b@x.org> 552 5.2.2 full"
    )
