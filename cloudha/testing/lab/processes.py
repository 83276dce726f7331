"""Process bookkeeping for the lab: process trees, start times, killing what we started.

Every process the lab starts is the leader of its own session (``start_new_session``),
so a "host" can be killed as a whole: its process group and every descendant. Each
is started through ``setpriv --pdeathsig KILL`` (:func:`dies_with_parent`), so a lab
whose own process is killed leaves nothing behind (the signal comes when the thread
that started the child ends: start a lab from a thread that outlives it, such as the
main thread).
A process is named by ``(pid, start time)`` (field 22 of ``/proc/PID/stat``), never by
its pid alone, so a pid that the kernel handed to another process since is never
signalled.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from collections.abc import Iterable
from pathlib import Path

import attrs

from cloudha.errors import CloudHAError

__all__ = [
    "LabError",
    "ProcessId",
    "alive",
    "descendants",
    "dies_with_parent",
    "kill_trees",
    "process_id",
    "python_env",
    "read_kill_file",
    "wait_gone",
    "write_kill_file",
]


class LabError(CloudHAError):
    """A lab component could not be started (a missing program, a port taken, a crash)."""


@attrs.frozen
class ProcessId:
    """A process: its pid and its start time in clock ticks since boot."""

    pid: int
    start: int


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its ")".
    return text[text.rindex(")") + 2 :].split()


def process_id(pid: int) -> ProcessId | None:
    """``pid`` with its start time; None when no such process runs."""
    fields = _stat(pid)
    if fields is None:
        return None
    return ProcessId(pid, int(fields[19]))


def alive(proc: ProcessId | int) -> bool:
    """Whether the process runs (a zombie does not; nor does a newer process with its pid)."""
    pid = proc if isinstance(proc, int) else proc.pid
    fields = _stat(pid)
    if fields is None or fields[0] == "Z":
        return False
    return isinstance(proc, int) or int(fields[19]) == proc.start


def _table() -> list[tuple[int, int, int]]:
    """(pid, ppid, process group) of every process."""
    found = []
    with os.scandir("/proc") as entries:
        for entry in entries:
            if entry.name.isdigit():
                fields = _stat(int(entry.name))
                if fields is not None and fields[0] != "Z":
                    found.append((int(entry.name), int(fields[1]), int(fields[2])))
    return found


def descendants(root: int) -> list[int]:
    """Every live descendant of ``root`` and every member of its process group."""
    table = _table()
    children: dict[int, list[int]] = {}
    for pid, ppid, _ in table:
        children.setdefault(ppid, []).append(pid)
    found = {pid for pid, _, group in table if group == root and pid != root}
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
            todo.append(child)
    found.discard(root)
    return sorted(found)


def kill_trees(processes: Iterable[ProcessId], sig: signal.Signals = signal.SIGKILL) -> list[int]:
    """Send ``sig`` to each live process of ``processes``, its group and its descendants.

    A process whose pid now belongs to another process is left alone. Returns
    the pids signalled (leaders first, then the rest).
    """
    leaders = [p for p in processes if alive(p)]
    targets: list[int] = []
    for leader in leaders:
        targets.append(leader.pid)
        targets.extend(descendants(leader.pid))
    for pid in dict.fromkeys(targets):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
    return list(dict.fromkeys(targets))


def wait_gone(pids: Iterable[int], timeout: float) -> list[int]:
    """Wait until none of ``pids`` runs (zombies count as gone); those still running."""
    deadline = time.monotonic() + timeout
    left = [p for p in pids if alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.02)
        left = [p for p in left if alive(p)]
    return left


def write_kill_file(path: Path, processes: Iterable[ProcessId]) -> None:
    """Write ``pid start`` lines, atomically (the fake BMC reads them at power-off)."""
    text = "".join(f"{p.pid} {p.start}\n" for p in processes)
    tmp = path.with_name(f"{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def read_kill_file(path: Path) -> list[ProcessId]:
    """The processes listed by :func:`write_kill_file` (none when the file is missing)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    found = []
    for line in text.splitlines():
        pid, _, start = line.partition(" ")
        if pid.isdigit() and start.strip().isdigit():
            found.append(ProcessId(int(pid), int(start)))
    return found


def python_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (this process's environment by default) with ``PYTHONPATH`` leading to this
    very cloudha package, so ``python -m cloudha...`` in a child runs the same code."""
    import cloudha

    result = dict(os.environ if env is None else env)
    root = str(Path(cloudha.__file__).resolve().parent.parent)
    rest = result.get("PYTHONPATH", "")
    result["PYTHONPATH"] = root if not rest else f"{root}{os.pathsep}{rest}"
    return result


def dies_with_parent(argv: list[str], *, setpriv: list[str] | None = None) -> list[str]:
    """``argv`` run through ``setpriv --pdeathsig KILL`` (plus ``setpriv`` options, e.g. a
    user to become), so the child is killed when the thread that started it ends.

    Without setpriv (util-linux) ``argv`` runs as it is, unless ``setpriv`` options were
    asked for: then :class:`LabError`.
    """
    program = shutil.which("setpriv")
    if program is None:
        if setpriv:
            raise LabError("setpriv (util-linux) is needed to run the lab's processes")
        return list(argv)
    return [program, "--pdeathsig", "KILL", *(setpriv or []), *argv]
