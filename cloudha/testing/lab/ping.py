"""``ping`` on a lab host: a lab address answers while that host's processes run.

Every lab host listens on loopback, where the kernel answers a ping to any
127.x address whether the "host" runs or not, and this machine may have no
``ping`` at all. The lab puts this program first on its hosts' ``PATH``
(:attr:`Lab.ping_program <cloudha.testing.lab.cluster.Lab.ping_program>`),
so the daemon's neighbour ping over SSH
(:class:`~cloudha.transport.gateway.SSHAgentGateway`) sees what a real
network would show: a host answers while one of its processes (the ones its
kill file lists: libvirtd, heartbeat writer, sshd) runs, and gets no reply
once it crashed or was powered off.

It takes ``ping``'s options (``-c 1 -n -q -W 1 ADDRESS``), answers at once
and exits like iputils' ``ping``: 0 (a reply), 1 (no reply), 2 (an address
that is no lab host's, or bad arguments). It is run as a script
(``python -S ping.py HOSTS ARGS...``, ``HOSTS`` a JSON object mapping each
lab address to its host's kill file), so it imports nothing but the
standard library: a neighbour's ping must answer in well under a second.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["alive", "main", "target"]

_WITH_VALUE = frozenset({"-c", "-W", "-w", "-i", "-s", "-t", "-I"})


def target(args: Sequence[str]) -> str | None:
    """The address ``ping args`` would ping (its one operand), None when there is not one."""
    operands: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg in _WITH_VALUE:
            skip = True
        elif not arg.startswith("-"):
            operands.append(arg)
    return operands[0] if len(operands) == 1 else None


def _runs(pid: int, start: int) -> bool:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0] != "Z" and int(fields[19]) == start


def alive(kill_file: Path) -> bool:
    """Whether a process the kill file lists (``PID START`` lines) still runs."""
    try:
        lines = kill_file.read_text().splitlines()
    except OSError:
        return False
    for line in lines:
        pid, _, start = line.partition(" ")
        if pid.isdigit() and start.strip().isdigit() and _runs(int(pid), int(start)):
            return True
    return False


def main(argv: Sequence[str]) -> int:
    """``argv``: the hosts file, then ``ping``'s arguments. Returns the exit status."""
    if not argv:
        print("usage: ping.py HOSTS [ping options] ADDRESS", file=sys.stderr)
        return 2
    try:
        hosts = json.loads(Path(argv[0]).read_text())
    except (OSError, ValueError) as exc:
        print(f"ping: cannot read the lab's hosts {argv[0]}: {exc}", file=sys.stderr)
        return 2
    address = target(argv[1:])
    if address is None:
        print("ping: usage error: one destination address is needed", file=sys.stderr)
        return 2
    kill_file = hosts.get(address) if isinstance(hosts, dict) else None
    if not isinstance(kill_file, str):
        print(f"ping: {address}: Name or service not known", file=sys.stderr)
        return 2
    if alive(Path(kill_file)):
        print(f"1 packets transmitted, 1 received, 0% packet loss ({address})")
        return 0
    print(f"1 packets transmitted, 0 received, 100% packet loss ({address})")
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
