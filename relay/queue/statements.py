"""The spool's SQL statements, each a function of an open connection to the spool file."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from relay.model import EnvelopeParams, Notify, RecipientNotice
from relay.queue.bodies import insert_body, insert_body_file
from relay.queue.bodies import select_data as select_data  # re-exported: tests read with it
from relay.queue.records import AttemptRecord, NewMessage, QueueEntry, QueueStats, RecipientState
from relay.queue.sentjobs import count_jobs, insert_from_message
from relay.reply import Reply

R = TypeVar("R")
Write = Callable[[sqlite3.Connection], R]  # one write of a group transaction


def run_batch(db: sqlite3.Connection, writes: list[Write[R]]) -> list[R]:
    """Run writes in one transaction, all or none; their results in order."""
    db.execute("BEGIN IMMEDIATE")
    try:
        results = [write(db) for write in writes]
        db.execute("COMMIT")
    except BaseException:
        # SQLite rolls back by itself on some errors (a full disk at COMMIT): a second
        # ROLLBACK would replace the real error with "no transaction is active".
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return results


def insert_message(db: sqlite3.Connection, message: NewMessage, window: float) -> str | None:
    """Insert one message inside a transaction the caller holds; None for a duplicate."""
    try:
        return _insert_message(db, message, window)
    finally:
        if message.staged is not None:
            # Named by its row, or a duplicate: the descriptor goes either way. The file goes
            # unless a committed row names it (the spool settles it after the transaction).
            message.staged.close()


def _insert_message(db: sqlite3.Connection, message: NewMessage, window: float) -> str | None:
    if message.fingerprint is not None:
        # One statement: a fingerprint older than the window is taken over, a fresh one is left
        # as it is (no row changed), and the message is then a duplicate.
        taken = db.execute(
            "INSERT INTO accepted (fingerprint, id, at) VALUES (?, ?, ?) "
            "ON CONFLICT (fingerprint) DO UPDATE SET id = excluded.id, at = excluded.at "
            "WHERE at < ?",
            (message.fingerprint, message.id, message.received_at, message.received_at - window),
        ).rowcount
        if not taken:
            return None
    cursor = db.execute(
        "INSERT INTO messages (id, login, sender, message_id, received_at, next_attempt, "
        "is_bounce, body_offset, sent_header, claimed_at, smtputf8, dsn_ret, dsn_envid) "
        "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (
            message.id,
            message.login,
            message.sender,
            message.message_id,
            message.received_at,
            message.received_at,
            int(message.is_bounce),
            message.body_offset,
            message.sent_header,
            # Its first attempt starts as this commits: marked here, it costs no fsync of its own.
            message.received_at,
            int(message.params.smtputf8),
            message.params.ret,
            message.params.envid,
        ),
    )
    seq = cursor.lastrowid
    notices = [(r, message.params.notice(r)) for r in message.recipients]
    db.executemany(
        "INSERT OR IGNORE INTO recipients (message_seq, address, state, notify, orcpt) "
        "VALUES (?, ?, ?, ?, ?)",
        [(seq, r, RecipientState.PENDING.value, _notify_text(n), n.orcpt) for r, n in notices],
    )
    if message.staged is None:
        insert_body(db, seq, message.upstream_data)
    else:
        insert_body_file(db, seq, message.upstream_data, message.staged)
    return message.id


def _note_user_status(
    db: sqlite3.Connection, login: str, attempt: AttemptRecord, now: float
) -> None:
    erred = bool(attempt.deferred or attempt.failed)
    # NULL leaves the user's earlier time or error as it was.
    db.execute(
        "INSERT INTO user_status (login, last_delivered_at, last_error, last_error_at) "
        "VALUES (?, ?, ?, ?) ON CONFLICT (login) DO UPDATE SET "
        "last_delivered_at = coalesce(excluded.last_delivered_at, last_delivered_at), "
        "last_error = coalesce(excluded.last_error, last_error), "
        "last_error_at = coalesce(excluded.last_error_at, last_error_at)",
        (
            login,
            now if attempt.delivered else None,
            attempt.reply if erred else None,
            now if erred else None,
        ),
    )


@dataclass(frozen=True, slots=True)
class UserStatus:
    """A user's last delivery and last delivery error."""

    last_delivered_at: float | None
    last_error: str | None
    last_error_at: float | None


def select_user_status(db: sqlite3.Connection) -> dict[str, UserStatus]:
    """Per user: when mail last went out, and the last provider error."""
    rows = db.execute(
        "SELECT login, last_delivered_at, last_error, last_error_at FROM user_status"
    ).fetchall()
    return {str(login): UserStatus(*rest) for login, *rest in rows}


def select_sent_header(db: sqlite3.Connection, message_id: str) -> bytes | None:
    """The stored Sent-copy header block."""
    row = db.execute("SELECT sent_header FROM messages WHERE id = ?", (message_id,)).fetchone()
    return None if row is None else bytes(row[0])


def apply_attempt(
    db: sqlite3.Connection, message_id: str, attempt: AttemptRecord, now: float
) -> QueueEntry | None:
    """Record one attempt's outcome per recipient and the next try, in the caller's transaction."""
    row = db.execute(
        _AFTER_ATTEMPT,
        (
            attempt.next_attempt,
            attempt.reply,
            attempt.in_doubt_since,
            int(attempt.resent_in_doubt),
            message_id,
        ),
    ).fetchone()
    if row is None:
        return None
    seq, *fields = row
    rows = db.execute(_RECIPIENTS, (seq,)).fetchall()
    states = _states(rows)
    delivered_before = RecipientState.DELIVERED in (state for state, _ in states.values())
    for state, replies in _outcomes(attempt):
        for address, reply in replies.items():
            if address in states:
                states[address] = (state, reply.line)
    done = all(state is RecipientState.DELIVERED for state, _ in states.values())
    entry = _queue_entry(fields, states, rows, removed=done)
    if attempt.delivered and not delivered_before and attempt.sent_job is not None:
        # In the same transaction as the delivery, so a crash cannot lose the Sent copy.
        insert_from_message(db, seq, attempt.sent_job, now)
    if attempt.bounce is not None:
        # Likewise the DSN: a failure recorded without it would leave the sender never told.
        insert_message(db, attempt.bounce, 0.0)
    _note_user_status(db, entry.login, attempt, now)
    if done:
        # Deleting in the same transaction saves a second fsync per mail. The recipients'
        # states, the counts and the attempt's row would go with it, so they are not written.
        db.execute("DELETE FROM messages WHERE seq = ?", (seq,))
    else:
        _write_outcome(db, seq, attempt, now)
    return entry


def _outcomes(attempt: AttemptRecord) -> tuple[tuple[RecipientState, dict[str, Reply]], ...]:
    """Each recipient state with the attempt's replies that set it, in the order applied."""
    return (
        (RecipientState.DELIVERED, attempt.delivered),
        (RecipientState.FAILED, attempt.failed),
        (RecipientState.PENDING, attempt.deferred),
    )


def _write_outcome(db: sqlite3.Connection, seq: int, attempt: AttemptRecord, now: float) -> None:
    """The attempt's row, and what it changed of a message that stays queued."""
    for state, replies in _outcomes(attempt):
        if replies:
            db.executemany(
                "UPDATE recipients SET state = ?, reply = ? WHERE message_seq = ? AND address = ?",
                [(state.value, reply.line, seq, address) for address, reply in replies.items()],
            )
    db.execute(
        "UPDATE messages SET attempts = attempts + 1, last_reply = ?, next_attempt = ?, "
        "claimed_at = ?, resent_in_doubt = resent_in_doubt + ? WHERE seq = ?",
        (
            attempt.reply,
            attempt.next_attempt,
            attempt.in_doubt_since,
            int(attempt.resent_in_doubt),
            seq,
        ),
    )
    db.execute(
        "INSERT INTO attempts (message_seq, at, reply) VALUES (?, ?, ?)",
        (seq, now, attempt.reply),
    )


def select_stats(db: sqlite3.Connection, now: float) -> QueueStats:
    """Counts of queued and deferred mail, the oldest arrival, pending Sent copies."""
    queued, deferred, oldest = db.execute(
        "SELECT count(*), count(*) FILTER (WHERE attempts > 0), min(received_at) FROM messages"
    ).fetchone()
    return QueueStats(int(queued), int(deferred), oldest, count_jobs(db), now)


def select_due(db: sqlite3.Connection, now: float) -> list[tuple[str, str]]:
    """(id, login) of every message of each user with a message due, by acceptance order."""
    # A user's queue is retried together, oldest first, as Postfix retries a destination's
    # queue: deferred mail keeps its order however the per-message backoff jitter fell.
    rows = db.execute(
        "SELECT id, login FROM messages WHERE login IN "
        "(SELECT login FROM messages WHERE next_attempt <= ?) ORDER BY seq",
        (now,),
    ).fetchall()
    return [(str(i), str(login)) for i, login in rows]


def select_deferred_logins(db: sqlite3.Connection) -> set[str]:
    """Logins with deferred mail."""
    rows = db.execute("SELECT DISTINCT login FROM messages WHERE attempts > 0").fetchall()
    return {str(row[0]) for row in rows}


def make_due(db: sqlite3.Connection, login: str, now: float) -> int:
    """Bring a user's later attempts forward to now; how many moved."""
    return db.execute(
        "UPDATE messages SET next_attempt = ? WHERE login = ? AND next_attempt > ? "
        "AND attempts > 0",
        (now, login, now),
    ).rowcount


def claim_messages(db: sqlite3.Connection, message_ids: list[str], now: float) -> list[QueueEntry]:
    """The entries as they stood, then marked as under attempt (in the caller's transaction)."""
    entries = [entry for i in message_ids for entry in select_entries(db, None, i)]
    db.executemany(
        "UPDATE messages SET claimed_at = ? WHERE id = ? AND claimed_at IS NULL",
        [(now, entry.id) for entry in entries],
    )
    return entries


def make_id_due(db: sqlite3.Connection, message_id: str, now: float) -> int:
    """Make one message due now; 1 if it exists, else 0."""
    return db.execute(
        "UPDATE messages SET next_attempt = ? WHERE id = ?", (now, message_id)
    ).rowcount


def defer_message(db: sqlite3.Connection, message_id: str, until: float) -> None:
    """Not tried after all (paced): due again at until, and nothing in doubt about it."""
    db.execute(
        "UPDATE messages SET next_attempt = ?, claimed_at = NULL WHERE id = ?", (until, message_id)
    )


def postpone_user(db: sqlite3.Connection, login: str, until: float) -> None:
    """Set every earlier next attempt of a user's mail to `until`."""
    db.execute(
        "UPDATE messages SET next_attempt = ? WHERE login = ? AND next_attempt < ?",
        (until, login, until),
    )


def delete_message(db: sqlite3.Connection, message_id: str) -> bool:
    """Delete one message; whether it existed."""
    return db.execute("DELETE FROM messages WHERE id = ?", (message_id,)).rowcount > 0


def set_warned(db: sqlite3.Connection, message_id: str) -> None:
    """Flag a message as having had its delay warning."""
    db.execute("UPDATE messages SET warned = 1 WHERE id = ?", (message_id,))


def expire_message(db: sqlite3.Connection, message_id: str, bounce: NewMessage | None) -> None:
    """Drop a message past its lifetime and queue its DSN, inside the caller's transaction."""
    if bounce is not None:
        insert_message(db, bounce, 0.0)
    delete_message(db, message_id)


def warn_message(db: sqlite3.Connection, message_id: str, warning: NewMessage | None) -> None:
    """Queue a delay warning and flag the message as warned, inside the caller's transaction."""
    if warning is not None:
        insert_message(db, warning, 0.0)
    set_warned(db, message_id)


def delete_accepted_before(db: sqlite3.Connection, cutoff: float) -> None:
    """Forget duplicate-detection fingerprints older than cutoff."""
    db.execute("DELETE FROM accepted WHERE at < ?", (cutoff,))


# A message row's seq, then the columns _queue_entry takes.
_ENTRIES = (
    "SELECT seq, id, login, sender, message_id, received_at, next_attempt, attempts, "
    "last_reply, is_bounce, warned, claimed_at, resent_in_doubt, smtputf8, dsn_ret, dsn_envid "
    "FROM messages"
)
# The same columns as an attempt leaves them: the values its UPDATE (_write_outcome) writes.
_AFTER_ATTEMPT = (
    "SELECT seq, id, login, sender, message_id, received_at, ?, attempts + 1, ?, "
    "is_bounce, warned, ?, resent_in_doubt + ?, smtputf8, dsn_ret, dsn_envid "
    "FROM messages WHERE id = ?"
)
_RECIPIENTS = (
    "SELECT address, state, reply, notify, orcpt FROM recipients WHERE message_seq = ? "
    "ORDER BY rowid"
)
RecipientRow = tuple[str, str, str, str, str | None]  # address, state, reply, notify, orcpt


def select_entries(
    db: sqlite3.Connection, due_before: float | None, message_id: str | None = None
) -> list[QueueEntry]:
    """Entries (all, due ones, or one by id) in order of acceptance, with their recipients."""
    query = _ENTRIES
    where: list[str] = []
    args: list[object] = []
    if due_before is not None:
        where.append("next_attempt <= ?")
        args.append(due_before)
    if message_id is not None:
        where.append("id = ?")
        args.append(message_id)
    if where:
        query += " WHERE " + " AND ".join(where)
    entries = []
    for seq, *fields in db.execute(query + " ORDER BY seq", args).fetchall():
        rows = db.execute(_RECIPIENTS, (seq,)).fetchall()
        entries.append(_queue_entry(fields, _states(rows), rows))
    return entries


def _states(rows: list[RecipientRow]) -> dict[str, tuple[RecipientState, str]]:
    """Each recipient's state and last reply, in the order they were given."""
    return {address: (RecipientState(state), reply) for address, state, reply, *_ in rows}


def _queue_entry(
    fields: list[Any],
    recipients: dict[str, tuple[RecipientState, str]],
    rows: list[RecipientRow],
    removed: bool = False,
) -> QueueEntry:
    """The entry of a message row (after seq), its recipients' states and their rows."""
    notices = tuple(
        (address, RecipientNotice(_notify_set(notify), orcpt))
        for address, _, _, notify, orcpt in rows
        if notify or orcpt
    )
    return QueueEntry(
        id=fields[0],
        login=fields[1],
        sender=fields[2],
        message_id=fields[3],
        received_at=fields[4],
        next_attempt=fields[5],
        attempts=fields[6],
        last_reply=fields[7],
        is_bounce=bool(fields[8]),
        warned=bool(fields[9]),
        recipients=recipients,
        removed=removed,
        claimed_at=fields[10],
        resent_in_doubt=fields[11],
        params=EnvelopeParams(bool(fields[12]), fields[13], fields[14], notices),
    )


def _notify_text(notice: RecipientNotice) -> str:
    """NOTIFY as stored: its keywords, comma-separated ('' when not given)."""
    return ",".join(sorted(n.value for n in notice.notify))


def _notify_set(text: str) -> frozenset[Notify]:
    """NOTIFY as read back."""
    return frozenset(Notify(word) for word in text.split(",") if word)
