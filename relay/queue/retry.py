"""Pure retry-schedule decisions for queued mail: backoff, expiry, delay warnings."""

from __future__ import annotations

from relay.config.model import QueueConfig

JITTER = 0.1  # ±10%: mail deferred together must not all come back at the same instant


def retry_delay(attempts: int, config: QueueConfig, spread: float) -> float:
    """Seconds until the next try after `attempts` tries; spread in [-1, 1] picks the jitter."""
    base = min(config.max_backoff, config.min_backoff * 2.0 ** max(0, attempts - 1))
    return base * (1.0 + JITTER * spread)


def is_expired(received_at: float, now: float, config: QueueConfig) -> bool:
    """Whether a message has been queued longer than its lifetime."""
    return now - received_at >= config.lifetime


def needs_delay_warning(received_at: float, now: float, warned: bool, config: QueueConfig) -> bool:
    """Whether the sender should now hear that their mail is delayed (off when 0)."""
    return config.delay_warning > 0 and not warned and now - received_at >= config.delay_warning
