"""sendmail's command line as Postfix's and msmtp's sendmail read it: what relay does with it."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from relay.cli.common import UsageError

# Postfix sendmail(1)'s options ("B:C:F:GIL:N:O:R:UV:X:b:ce:f:h:imno:p:r:q:tvx"): those after a
# colon take a value, given in the same word (-fADDR, -oi) or as the next one (-f ADDR).
WITH_VALUE = frozenset("BCFLNORVXbefhopqr")
FLAGS = frozenset("GIUcimntvx")
# Accepted and ignored, as Postfix and msmtp do: they steer sendmail's own queue, logging and
# aliasing (-L label, -N/-R/-V DSN, -X log, -h hops, -e/-o error and delivery modes, -p, -x).
IGNORED = frozenset("GLNORUVXcehmnpx")


class Mode(enum.Enum):
    """What sendmail was asked to do."""

    DELIVER = "m"  # -bm, the default: a message on standard input
    SMTP = "s"  # -bs: an SMTP conversation on standard input and output
    NEWALIASES = "i"  # -bi or -I: relay has no aliases file, so there is nothing to do


@dataclass(frozen=True, slots=True)
class SendmailCall:
    """One sendmail command line, read."""

    mode: Mode = Mode.DELIVER
    recipients: tuple[str, ...] = ()
    sender: str | None = None  # -f / -r; None: the caller's own (its Unix login)
    full_name: str | None = None  # -F, for a From relay adds to a message without one
    from_headers: bool = False  # -t: recipients from To, Cc and Bcc as well
    dots_end: bool = True  # a line of one "." ends the message, unless -i / -oi
    body: str | None = None  # -B 7BIT | 8BITMIME
    config: str | None = None  # -C: relay's config file
    verbose: bool = False  # -v: the daemon's replies on standard error


def parse_sendmail(arguments: Sequence[str]) -> SendmailCall:
    """Read sendmail's options and recipients; UsageError naming a bad option."""
    found: dict[str, str] = {}
    flags: set[str] = set()
    recipients: list[str] = []
    words = list(arguments)
    index = 0
    while index < len(words):
        word = words[index]
        index += 1
        if word == "--":
            recipients.extend(words[index:])
            break
        if not word.startswith("-") or word == "-":
            recipients.append(word)
            continue
        letters = word[1:]
        while letters:
            letter, letters = letters[0], letters[1:]
            if letter in FLAGS:
                flags.add(letter)
                continue
            if letter not in WITH_VALUE:
                shown = word if word.startswith("--") else f"-{letter}"
                raise UsageError(f"unknown option {shown} (see `relay sendmail --help`)")
            if not letters:
                if index == len(words):
                    raise UsageError(f"option -{letter} needs a value")
                letters, index = words[index], index + 1
            _value(letter, letters, found, flags)
            letters = ""
    return _call(found, flags, recipients)


def _value(letter: str, value: str, found: dict[str, str], flags: set[str]) -> None:
    if letter == "o":
        # -oi is -i; Postfix ignores every other -o (-odb, -odi, -oem, -oep, -om, -o7, ...).
        if value == "i":
            flags.add("i")
        return
    if letter == "q":
        raise UsageError("-q (run the queue) is not supported: relay's daemon runs its queue")
    if letter == "r":
        letter = "f"  # -r is an old name for -f
    if letter not in IGNORED:
        found[letter] = value


def _call(found: dict[str, str], flags: set[str], recipients: list[str]) -> SendmailCall:
    mode = _mode(found.get("b", "m"))
    if "I" in flags:
        mode = Mode.NEWALIASES
    body = found.get("B")
    if body is not None and body.upper() not in ("7BIT", "8BITMIME"):
        raise UsageError(f"-B {body}: the body type is 7BIT or 8BITMIME")
    if mode is Mode.SMTP and recipients:
        raise UsageError("-bs takes no recipients: the SMTP client names them with RCPT TO")
    sender = found.get("f")
    if sender is not None:
        sender = sender.strip().removeprefix("<").removesuffix(">").strip()
    return SendmailCall(
        mode=mode,
        recipients=tuple(recipients),
        sender=sender,
        full_name=found.get("F"),
        from_headers="t" in flags,
        dots_end="i" not in flags,
        body=None if body is None else body.upper(),
        config=found.get("C"),
        verbose="v" in flags,
    )


def _mode(letter: str) -> Mode:
    for mode in Mode:
        if mode.value == letter:
            return mode
    unsupported = {
        "d": "run the daemon with `relay serve`",
        "D": "run the daemon with `relay serve`",
        "p": "see the queue with `relay queue list`",
        "v": "relay does not verify addresses",
    }
    why = unsupported.get(letter, "relay sendmail takes -bm (the default), -bs and -bi")
    raise UsageError(f"-b{letter} is not supported: {why}")


USAGE = """\
usage: relay sendmail [options] [recipient ...]   (or as `sendmail`, through a symlink)

Hands a message on standard input to the relay daemon over its Unix socket, as the relay user
your Unix user is mapped to (listen: - socket: ..., unix_users: in config.yaml).

  -t              recipients from To, Cc and Bcc too (Bcc reaches no recipient)
  -i, -oi         a line of one "." does not end the message
  -f ADDR, -r ADDR  envelope sender (default: your own address)
  -F NAME         the name in the From relay adds to a message that has none
  -B 7BIT|8BITMIME  body type
  -bm             deliver a message (the default); -bs: SMTP on standard input and output
  -C FILE         relay's config file (default: $RELAY_CONFIG, else /etc/relay/config.yaml)
  -v              show the daemon's replies
Accepted and ignored: -G -L -N -O -R -U -V -X -c -e -h -m -n -o... -p -x, -bi and -I.
Exit status (sysexits.h): 0 sent or queued, 64 usage, 65 message refused, 67 recipient
unknown, 69 refused, 75 try again later (relay not running), 77 not allowed, 78 config.
"""
