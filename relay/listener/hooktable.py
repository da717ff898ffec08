"""A handler's hooks as aiosmtpd looks them up: found once per class, not scanned per session."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any


class HookTable:
    """A handler whose handle_<VERB> hooks aiosmtpd finds without scanning it per session."""

    # What aiosmtpd looks for on a handler: handle_<VERB> hooks and auth_<MECHANISM> methods.
    hook_names: tuple[str, ...] = ()

    def __init_subclass__(cls) -> None:
        super().__init_subclass__()
        cls.hook_names = tuple(
            name for kind in cls.__mro__ for name in vars(kind) if name.startswith(HOOK_PREFIXES)
        )

    def __init__(self) -> None:
        # aiosmtpd's hook table (handle_<VERB> by verb), built once for every session to share.
        self.hooks: dict[str, Callable[..., Any]] = {
            name[len("handle_") :]: getattr(self, name)
            for name in self.hook_names
            if name.startswith("handle_")
        }
        ehlo = self.hooks.get("EHLO")
        if ehlo is not None:
            # aiosmtpd reads the EHLO hook's signature for every session (its 4- or 5-argument
            # forms): inspect takes 45 µs on a bound method, and answers at once for a hook
            # that carries its signature. The sessions call the bound method in hooks.
            setattr(self, "handle_EHLO", SignedHook(ehlo))  # noqa: B010  (shadows the method)

    def __dir__(self) -> list[str]:
        """Only the names aiosmtpd looks up on a handler (handle_*, auth_*)."""
        # As RelaySMTP.__dir__: aiosmtpd scans the handler the same way for every session.
        return list(self.hook_names)


HOOK_PREFIXES = ("handle_", "auth_")


class SignedHook:
    """A bound hook that carries its signature, so that inspect.signature() need not work it out."""

    __slots__ = ("__signature__", "_method")

    def __init__(self, method: Callable[..., Any]) -> None:
        self._method = method
        self.__signature__ = inspect.signature(method)

    def __call__(self, *args: Any) -> Any:
        return self._method(*args)
