"""CPU time and memory of running processes, read from /proc (Linux only)."""

from __future__ import annotations

import os
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PROC = Path("/proc")
# Indexes into the fields of /proc/PID/stat that follow the ")" closing the command name.
_PPID, _UTIME, _STIME, _CUTIME, _CSTIME = 1, 11, 12, 13, 14


def _stat(pid: int) -> list[str]:
    # The command name may contain spaces and parentheses; it ends at the last ")".
    return (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of one process, its threads and its reaped children."""
    fields = _stat(pid)
    ticks = sum(int(fields[i]) for i in (_UTIME, _STIME, _CUTIME, _CSTIME))
    return ticks / CLOCK_TICKS


def machine_busy_seconds() -> tuple[float, float]:
    """CPU seconds of all cores since boot: (in processes or stolen, in interrupts)."""
    # Interrupt time (loopback TCP is mostly softirq work) is charged to no process, so it is
    # kept apart from the time that the processes' own counters can account for.
    fields = (PROC / "stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + steal) / CLOCK_TICKS, (irq + softirq) / CLOCK_TICKS


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """CPU seconds of each thread of a process, by thread id (the main thread's id is pid)."""
    seconds = {}
    for task in (PROC / str(pid) / "task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the thread ended while we looked
        seconds[task.name] = (int(fields[_UTIME]) + int(fields[_STIME])) / CLOCK_TICKS
    return seconds


def descendants(pid: int) -> list[int]:
    """pid and every live process below it."""
    children: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int(_stat(int(entry.name))[_PPID])
        except (OSError, IndexError, ValueError):
            continue  # exited while we looked
        children.setdefault(parent, []).append(int(entry.name))
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        pending.extend(children.get(current, []))
    return found


def tree_cpu_seconds(pid: int, *, tree: bool) -> float:
    """CPU seconds of pid, and with tree=True of every live process below it too."""
    # A child that exited and was reaped moved its time into its parent's cutime/cstime, and a
    # live child is no longer counted there, so nothing is counted twice.
    total = 0.0
    for member in descendants(pid) if tree else [pid]:
        try:
            total += cpu_seconds(member)
        except (OSError, IndexError, ValueError):
            continue
    return total


def memory_kib(pid: int, field: str) -> int:
    """One Vm* line of /proc/PID/status (VmRSS: now; VmHWM: peak), in KiB."""
    for line in (PROC / str(pid) / "status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise ValueError(f"no {field} in /proc/{pid}/status")


def tree_memory_kib(pid: int, field: str) -> int:
    """The sum of one Vm* field over pid and every live process below it."""
    total = 0
    for member in descendants(pid):
        try:
            total += memory_kib(member, field)
        except (OSError, ValueError):
            continue
    return total


def tree_pss_kib(pid: int) -> int:
    """Proportional set size of pid and every live process below it: shared pages split."""
    total = 0
    for member in descendants(pid):
        try:
            lines = (PROC / str(member) / "smaps_rollup").read_text().splitlines()
        except OSError:
            continue
        total += sum(int(line.split()[1]) for line in lines if line.startswith("Pss:"))
    return total


def reset_peak(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0, same user); False when not allowed."""
    try:
        (PROC / str(pid) / "clear_refs").write_text("5")
    except OSError:
        return False
    return True


def open_files_limit(pid: int) -> int | None:
    """The soft RLIMIT_NOFILE of a process, None when unlimited or unreadable."""
    try:
        lines = (PROC / str(pid) / "limits").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("Max open files"):
            soft = line.split()[3]
            return int(soft) if soft.isdigit() else None
    return None


def open_files(pid: int) -> int:
    """How many file descriptors a process has open now."""
    return len(list((PROC / str(pid) / "fd").iterdir()))
