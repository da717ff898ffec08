"""The durable spool and what runs from it: attempts, retries, bounces, Sent-copy jobs, admin."""

from relay.queue.admin import QueueAdmin, create_queue, open_queue_admin
from relay.queue.runner import QueueRunner
from relay.queue.spool import Spool

__all__ = ["QueueAdmin", "QueueRunner", "Spool", "create_queue", "open_queue_admin"]
