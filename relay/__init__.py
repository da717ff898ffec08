"""relay: lets legacy apps send mail as real people through their own mailboxes."""

__version__ = "0.1.0"
