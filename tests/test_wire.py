"""The listener's wire details: plain addresses read as aiosmtpd's parser reads them."""

from __future__ import annotations

from types import SimpleNamespace
from typing import cast

from aiosmtpd.smtp import SMTP
from hypothesis import event, example, given, settings
from hypothesis import strategies as st

from relay.listener.wire import plain_address

ATEXT = "abcXYZ019!#$%&'*+/=?^_`{|}~-"
WEIRD = '.@<>()[]" \t\\,;:'
ATOMS = st.text(ATEXT, min_size=1, max_size=6)
DOT_ATOMS = st.lists(ATOMS, min_size=1, max_size=3).map(".".join)
PIECES = st.one_of(DOT_ATOMS, st.text(ATEXT + WEIRD, max_size=4))
ARGS = st.one_of(
    st.builds(
        lambda local, domain, gap, rest: f"<{local}@{domain}>{gap}{rest}",
        DOT_ATOMS,
        DOT_ATOMS,
        st.sampled_from(["", " ", "  ", "\t", "(c) ", " (c)"]),
        st.sampled_from(["", "SIZE=100", "SIZE=1 BODY=8BITMIME", "x", "(", " "]),
    ),
    st.lists(PIECES, max_size=6).map("".join),
)


def aiosmtpd_getaddr(arg: str) -> tuple[str | None, str | None]:
    """What aiosmtpd's own parser makes of a MAIL or RCPT argument."""
    bare = cast(SMTP, SimpleNamespace(local_part_limit=0))  # all _getaddr reads of its session
    return SMTP._getaddr(bare, arg)


@settings(max_examples=500, deadline=None, database=None)
@given(ARGS)
@example("<alice@example.org>")
@example("<alice@example.org> SIZE=100 BODY=8BITMIME")
@example("<>")
@example("<a..b@example.org>")
@example("<alice@[127.0.0.1]>")
@example('<"a b"@example.org>')
@example("<alice@example.org>(comment) SIZE=1")
def test_a_plain_address_is_read_exactly_as_aiosmtpd_reads_it(arg: str) -> None:
    plain = plain_address(arg)
    if plain is not None:
        assert plain == aiosmtpd_getaddr(arg)
    event(f"plain: {plain is not None}")


def test_the_forms_apps_send_are_plain() -> None:
    assert plain_address("<alice@example.org>") == ("alice@example.org", "")
    assert plain_address("<a.b+c@mail.example.org> SIZE=5") == ("a.b+c@mail.example.org", "SIZE=5")
    assert plain_address("<>") is None
    assert plain_address("alice@example.org") is None
