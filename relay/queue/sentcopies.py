"""Sent copies: filed once a mail is delivered, each retried on its own, never re-sending mail."""

from __future__ import annotations

import logging
import random
import secrets
import time
from collections.abc import Callable, Coroutine

from relay.config.live import LiveConfig
from relay.config.model import ProviderConfig, RelayConfig
from relay.errors import (
    PolicyRejection,
    SentCopyError,
    SentCopyRetry,
    StoreError,
    UpstreamError,
    smtp_reply,
)
from relay.model import User
from relay.ops.channels import Ops
from relay.queue.pause import SpoolPause
from relay.queue.records import QueueEntry
from relay.queue.retry import retry_delay
from relay.queue.sentjobs import SentJob, SentJobSpec
from relay.queue.spool import Spool
from relay.sent.filing import (
    SentCopyPlan,
    SentCopyResult,
    append_sent_copy,
    imap_account,
    plan_sent_copy,
    retry_plan,
    sent_folder_override,
)
from relay.state.store import Store
from relay.state.writer import StoreWriter, write_to
from relay.tls import TlsContexts
from relay.upstream.credentials import Credentials, UpstreamSecret
from relay.upstream.sendas import as_mailbox, copy_mailbox, message_header

logger = logging.getLogger("relay.sentcopies")  # the name shows in log lines: kept from 0.1


class SentCopies:
    """Files each delivered mail's copy in the user's Sent folder, from the spool's jobs."""

    def __init__(
        self,
        live: LiveConfig,
        store: Store,
        spool: Spool,
        credentials: Credentials,
        tls: TlsContexts,
        ops: Ops,
        pause: SpoolPause,
        writer: StoreWriter | None = None,
    ) -> None:
        self._live = live
        self._pause = pause
        self._store = store
        self._writer = writer
        self._spool = spool
        self._credentials = credentials
        self.tls = tls
        self._ops = ops
        self._inflight: set[str] = set()
        self._tried: set[str] = set()  # jobs this process has tried and not finished
        # Retry jitter needs no secrecy: a seeded generator, not a getrandom() call per mail.
        self._random = random.Random()  # noqa: S311

    @property
    def config(self) -> RelayConfig:
        """The config in force (a reload replaces it)."""
        return self._live.current

    def job_for(self, entry: QueueEntry, user: User | None) -> SentJobSpec | None:
        """A Sent-copy job for this message if the user's settings (as delivered) want one."""
        provider = self.config.providers.get(user.provider) if user else None
        if entry.is_bounce or user is None or provider is None:
            return None
        plan = plan_sent_copy(provider, user.sent_copy)
        if plan is SentCopyPlan.SKIP:
            return None
        return SentJobSpec(id=secrets.token_hex(8), plan=plan.value)

    def start(
        self, job_id: str, spawn: Callable[[Coroutine[object, object, None]], object]
    ) -> None:
        """File the job's copy in a task of spawn's, unless that is under way already."""
        if job_id not in self._inflight:
            self._inflight.add(job_id)
            spawn(self._copy_to_sent(job_id))

    async def _copy_to_sent(self, job_id: str) -> None:
        """File one Sent copy; a failure is retried on its own and never re-sends the mail."""
        job = None
        try:
            job = await self._spool.sent_job(job_id)
            if job is None:
                return
            if time.time() - job.sent_at >= self.config.queue.lifetime:
                logger.error(
                    "sent.expired job=%s user=%s msg_id=%s last_error=%r",
                    job.id,
                    job.login,
                    job.message_id,
                    job.last_error,
                )
                await self._done(job.id)
                return
            await self._file_copy(job)
        except Exception:  # noqa: BLE001  whatever it was, the job backs off like any other
            await self._crashed(job_id, job)
        finally:
            self._inflight.discard(job_id)

    async def _done(self, job_id: str) -> None:
        await self._spool.sent_job_done(job_id)
        self._tried.discard(job_id)

    async def _crashed(self, job_id: str, job: SentJob | None) -> None:
        """A job ended in an exception: logged once, counted, retried on the normal backoff."""
        attempts = job.attempts if job is not None else 0
        delay = retry_delay(attempts + 1, self.config.queue, self._random.uniform(-1, 1))
        logger.exception(
            "sent.crashed job=%s attempt=%d next_in=%.0fs", job_id, attempts + 1, delay
        )
        self._ops.metrics.job_crashed("sent_copy")
        until = time.time() + delay
        try:
            await self._spool.sent_job_failed(job_id, "local error", until)
        except Exception as error:  # noqa: BLE001  the backoff then lives in memory
            self._pause.hold(job_id, until)
            if isinstance(error, StoreError):
                self._pause.begin(f"spool write failed: {error}")

    async def _file_copy(self, job: SentJob) -> None:
        user = self._store.find_user(job.login)
        provider = self.config.providers.get(user.provider) if user else None
        if user is None or provider is None or provider.imap is None:
            logger.error(
                "sent.dropped job=%s user=%s reason=user, provider or imap gone", job.id, job.login
            )
            await self._done(job.id)
            return
        # Send As: the copy may belong in the shared mailbox's Sent (sent_copy_mailbox).
        copier = as_mailbox(user, copy_mailbox(user, provider, await message_header(job.data)))
        try:
            result = await self._append_as(job, copier, provider)
        except SentCopyError as error:
            await self._sent_copy_failed(job, user, error)
            return
        # Another mailbox's folder is not the user's to remember.
        remember = result.folder_to_remember if copier is user else None
        if remember is not None and remember != user.sent_folder_found:
            await write_to(
                self._store,
                self._writer,
                lambda store: store.remember_sent_folder(user.login, remember),
            )
        await self._done(job.id)

    async def _append_as(
        self, job: SentJob, user: User, provider: ProviderConfig
    ) -> SentCopyResult:
        """Log in as user and file the copy; a refused access token gets one fresh try."""
        opened = await self._imap_secret(user, provider)
        try:
            return await self._append(job, user, provider, opened)
        except SentCopyError as error:
            if error.step != "login" or not self._credentials.refused(user, opened):
                raise
        return await self._append(job, user, provider, await self._imap_secret(user, provider))

    async def _imap_secret(self, user: User, provider: ProviderConfig) -> UpstreamSecret:
        try:
            return await self._credentials.open(user, provider)
        except (UpstreamError, PolicyRejection) as error:
            # Until a person fixes the login (authorizes again, stores a password), retry slowly.
            reply = smtp_reply(error).line
            raise SentCopyError("login", user.login, reply, SentCopyRetry.AFTER_FIX) from None

    async def _append(
        self, job: SentJob, user: User, provider: ProviderConfig, opened: UpstreamSecret
    ) -> SentCopyResult:
        account = imap_account(user, provider, opened.secret, bearer=opened.bearer)
        if account is None:
            raise SentCopyError("login", user.login, "no imap endpoint", SentCopyRetry.NEVER)
        plan = SentCopyPlan(job.plan)
        first = job.attempts == 0 and job.id not in self._tried
        # A try whose failure could not be written counts too: its APPEND may have landed.
        self._tried.add(job.id)
        return await append_sent_copy(
            account,
            job.data,
            job.message_id,
            job.sent_at,
            plan=plan if first else retry_plan(plan),
            folder_override=sent_folder_override(user, provider),
            remembered_folder=user.sent_folder_found,
            tls=self.tls,
            timeout=self.config.upstream.timeout,
        )

    async def _sent_copy_failed(self, job: SentJob, user: User, error: SentCopyError) -> None:
        self._ops.metrics.sent_copy_failed(user.provider)
        if error.retry is SentCopyRetry.NEVER:
            logger.error(
                "sent.abandoned job=%s user=%s msg_id=%s reply=%r",
                job.id,
                job.login,
                job.message_id,
                str(error),
            )
            await self._done(job.id)
            return
        queue = self.config.queue
        if error.retry is SentCopyRetry.SOON:
            delay = retry_delay(job.attempts + 1, queue, self._random.uniform(-1, 1))
        else:
            delay = queue.max_backoff  # a refused login only locks the account if hammered
        logger.warning(
            "sent.retry job=%s user=%s attempt=%d next_in=%.0fs reply=%r",
            job.id,
            job.login,
            job.attempts + 1,
            delay,
            str(error),
        )
        await self._spool.sent_job_failed(job.id, str(error), time.time() + delay)
