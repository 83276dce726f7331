"""A fake IPMI BMC (pyghmi's BMC server) for the lab and the integration tests: the program.

Run it as a separate process (pyghmi's client and server share one global
session loop, and in one process they slow each other down to seconds per
call)::

    FAKEBMC_PASSWORD=secret python -m cloudha.testing.lab.fakebmc_server \\
        --port 6230 --user admin --state-file /tmp/bmc.json [--power on|off] \\
        [--kill-file /tmp/host.pids]

The password comes from the environment variable ``FAKEBMC_PASSWORD``, so it
is on no command line. The BMC listens on UDP 127.0.0.1 only (never another
address), speaks IPMI 2.0 / RMCP+ with cipher suite 3 (what pyghmi's server
implements), keeps the chassis power state in memory and writes it, with a
history of every chassis control request, to the state file as JSON after
every change (atomically, by rename)::

    {"pid": 123, "port": 6230, "power": "on", "history": ["off", "on", "cycle"]}

The state file is first written once the UDP socket is bound: its existence
means the BMC is ready. ``SIGUSR1`` / ``SIGUSR2`` set the power on / off out of
band (the history is left alone), for tests that need a given start state.

Power model: ``off`` and ``soft`` (ACPI shutdown; the fake OS always obeys)
turn the power off, ``on`` turns it on, ``cycle`` ends on (off, then on) and
``reset`` leaves the power as it is.

The host behind the BMC: with ``--kill-file``, every chassis control that
takes the power away from a running host (``off``, ``soft``, ``cycle``,
``reset``, and SIGUSR2) first SIGKILLs the processes listed in that file
(``PID START`` lines, :func:`cloudha.testing.lab.processes.write_kill_file`),
with their process groups and descendants, so that "the host lost power" is
real: its libvirtd, heartbeat writer and sshd die before the BMC answers. A
listed process whose pid now names another process (its start time differs)
is left alone. The file is read at each such request, so the lab may write it
after the BMC started.

The pyghmi server wrongly accepts a client's SHA-256 cipher-suite proposal
and then speaks SHA-1, which breaks the pyghmi client. This program rejects
every non-SHA-1 proposal (status 0x11, "invalid integrity algorithm") so the
client falls back to cipher suite 3; ipmitool proposes suite 3 and is not
affected. pyghmi's server also ignores a RAKP 1 message naming an unknown
user, which a client can only read as a timeout; this program answers it with
RAKP 2 status 0x0D ("unauthorized name"), as real BMCs do.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import traceback
from pathlib import Path
from types import FrameType
from typing import Any

import pyghmi.ipmi.bmc as bmc
import pyghmi.ipmi.private.session as ipmisession
from pyghmi.ipmi.private import constants, serversession

from cloudha.testing.lab.processes import kill_trees, read_kill_file

PASSWORD_VARIABLE = "FAKEBMC_PASSWORD"
"""The environment variable holding the BMC user's password."""

_original_open_session_response = serversession.ServerSession.create_open_session_response


def _open_session_response(self: Any, request: bytearray) -> bytearray:
    """Refuse RMCP+ open-session proposals other than HMAC-SHA1 (auth and integrity)."""
    if request[12] != 1 or request[20] != 1:
        self.clientsessionid = request[4:8]
        return bytearray([request[0], 0x11, 0, 0]) + request[4:8]
    response: bytearray = _original_open_session_response(self, request)
    return response


_original_got_rakp1 = serversession.ServerSession._got_rakp1


def _got_rakp1(self: Any, data: bytearray) -> None:
    """Answer RAKP 1 for an unknown user with RAKP 2 status 0x0D, as real BMCs do."""
    if data[27] and self.authdata.get(bytes(data[28:]).decode("utf-8", "replace")) is None:
        message = bytearray([data[0], 0x0D, 0, 0]) + self.clientsessionid
        self.send_payload(message, constants.payload_types["rakp2"], retry=False)
        return
    _original_got_rakp1(self, data)


serversession.ServerSession.create_open_session_response = _open_session_response
serversession.ServerSession._got_rakp1 = _got_rakp1


class FakeBmc(bmc.Bmc):  # type: ignore[misc]
    """A BMC whose chassis is a power flag, published to ``state_file``."""

    def __init__(
        self,
        user: str,
        password: str,
        port: int,
        state_file: Path,
        power: str,
        kill_file: Path | None = None,
    ) -> None:
        super().__init__({user: password}, port=port, address="127.0.0.1")
        self.state_file = state_file
        self.kill_file = kill_file
        self.powerstate = power
        self.history: list[str] = []
        self.bootdev = "default"
        self.writes = 0
        self.publish()

    def publish(self) -> None:
        """Write the state file (atomically)."""
        state = {
            "pid": os.getpid(),
            "port": self.port,
            "power": self.powerstate,
            "history": self.history,
        }
        # A fresh name per write: a signal handler may publish in the middle of a publish.
        self.writes += 1
        tmp = self.state_file.with_name(f"{self.state_file.name}.{self.writes}.tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self.state_file)

    def cut_power(self) -> None:
        """The host loses power: kill its processes (``--kill-file``), if it had power."""
        if self.kill_file is not None and self.powerstate == "on":
            kill_trees(read_kill_file(self.kill_file))

    def _control(self, request: str, power: str | None) -> None:
        if request in ("off", "soft", "cycle", "reset"):
            self.cut_power()
        self.history.append(request)
        if power is not None:
            self.powerstate = power
        self.publish()

    def get_power_state(self) -> str:
        return self.powerstate

    def power_off(self) -> None:
        self._control("off", "off")

    def power_on(self) -> None:
        self._control("on", "on")

    def power_cycle(self) -> None:
        self._control("cycle", "on")

    def power_reset(self) -> None:
        self._control("reset", None)

    def power_shutdown(self) -> None:
        self._control("soft", "off")

    def pulse_diag(self) -> None:
        self._control("diag", None)

    def get_boot_device(self) -> str:
        return self.bootdev

    def set_boot_device(self, bootdevice: str) -> None:
        self.bootdev = bootdevice

    def cold_reset(self) -> None:
        self._control("cold_reset", None)

    def is_active(self) -> bool:
        return self.powerstate == "on"


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, bind the BMC, publish its state and serve forever."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--state-file", type=Path, required=True)
    parser.add_argument("--power", choices=("on", "off"), default="on")
    parser.add_argument("--kill-file", type=Path, default=None)
    args = parser.parse_args(argv)
    password = os.environ.get(PASSWORD_VARIABLE)
    if password is None:
        parser.error(f"set the password in the environment variable {PASSWORD_VARIABLE}")
    server = FakeBmc(args.user, password, args.port, args.state_file, args.power, args.kill_file)

    def set_power(signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGUSR2:
            server.cut_power()
        server.powerstate = "on" if signum == signal.SIGUSR1 else "off"
        server.publish()

    signal.signal(signal.SIGUSR1, set_power)
    signal.signal(signal.SIGUSR2, set_power)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    while True:
        try:
            ipmisession.Session.wait_for_rsp(timeout=1)
        except Exception:
            # pyghmi's server trips over stray packets (e.g. from a client's
            # session with an earlier BMC on this port); keep serving.
            traceback.print_exc()


if __name__ == "__main__":
    sys.exit(main())
