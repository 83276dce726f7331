"""Trying an inventory's credentials: ``cloudha config check --test-credentials``.

For each host, :func:`check_credentials` tries what ``cloudha run`` will use:

* ``ssh``: runs ``true`` over SSH with the host's user, key and
  ``known_hosts`` (the host key verified, as always); skipped for
  ``agent = "local"`` hosts;
* ``libvirt``: connects to the host's libvirt URI and asks its hostname and
  version (:meth:`~cloudha.transport.libvirt.LibvirtHypervisorProbe.probe_host`);
* ``bmc``: asks the BMC its power status with the host's driver
  (:func:`~cloudha.oobm.drivers.default_power_drivers`); skipped for a host
  without one.

Each try is bounded by ``timeout`` seconds; the hosts are tried in
parallel. No password reaches a :class:`CredentialCheck`: a driver's
message is scrubbed of the host's BMC password before it is kept.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final

import attrs

from cloudha.errors import CloudHAError
from cloudha.inventory import HostEntry, Inventory
from cloudha.redact import redact

__all__ = ["PARTS", "CredentialCheck", "check_credentials"]

PARTS: Final = ("ssh", "libvirt", "bmc")
"""What is tried on each host, in this order."""


@attrs.frozen
class CredentialCheck:
    """One try: ``ok`` True (it worked), False (it failed) or None (skipped: nothing to try)."""

    host_id: str
    part: str
    ok: bool | None
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"host": self.host_id, "part": self.part, "ok": self.ok, "detail": self.detail}


def _reason(exc: BaseException, *secrets: str) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if not isinstance(exc, CloudHAError):
        text = f"{type(exc).__name__}: {text}"
    return redact(text, *secrets)


def _ssh(entry: HostEntry, timeout: float) -> CredentialCheck:
    if entry.agent == "local":
        return CredentialCheck(entry.id, "ssh", None, 'agent = "local": no SSH')
    from cloudha.transport.ssh import SSHTransport

    ssh = entry.ssh
    where = f"{ssh.user}@{entry.address}:{ssh.port}"
    try:
        with SSHTransport(
            username=ssh.user,
            port=ssh.port,
            key_filename=ssh.key,
            known_hosts=ssh.known_hosts,
            connect_timeout=timeout,
        ) as transport:
            result = transport.run(entry.address, ["true"], timeout=timeout, host_id=entry.id)
    except Exception as exc:  # every failure is this host's answer, whatever raised it
        return CredentialCheck(entry.id, "ssh", False, f"{where}: {_reason(exc)}")
    if result.exit_status != 0:
        return CredentialCheck(
            entry.id, "ssh", False, f"{where}: 'true' exited {result.exit_status}"
        )
    return CredentialCheck(entry.id, "ssh", True, f"{where}: host key verified, logged in")


def _libvirt(entry: HostEntry, timeout: float) -> CredentialCheck:
    from cloudha.transport.libvirt import LibvirtHypervisorProbe, redact_uri

    shown, secrets = redact_uri(entry.libvirt_uri)
    try:
        # The host's own URI as a template without fields (braces escaped).
        literal = entry.libvirt_uri.replace("{", "{{").replace("}", "}}")
        probe = LibvirtHypervisorProbe(literal)
        report = probe.probe_host(entry.to_host(), timeout=timeout)
    except Exception as exc:  # every failure is this host's answer
        return CredentialCheck(entry.id, "libvirt", False, f"{shown}: {_reason(exc, *secrets)}")
    major, rest = divmod(report.version, 1_000_000)
    minor, micro = divmod(rest, 1_000)
    return CredentialCheck(
        entry.id,
        "libvirt",
        True,
        f"{shown}: libvirt {major}.{minor}.{micro} on {report.hostname},"
        f" {report.running_domains} running",
    )


def _bmc(entry: HostEntry, timeout: float, drivers: dict[str, Any]) -> CredentialCheck:
    oobm = entry.oobm
    if oobm is None:
        return CredentialCheck(entry.id, "bmc", None, "no BMC")
    from cloudha.oobm.power import OobmConfig, PowerOperation

    password = oobm.password.reveal()
    port = f":{oobm.port}" if oobm.port is not None else ""
    where = f"{oobm.driver}://{oobm.username}@{oobm.address}{port}"
    driver = drivers.get(oobm.driver)
    if driver is None:
        return CredentialCheck(
            entry.id, "bmc", False, f"{where}: driver {oobm.driver!r} is not available here"
        )
    try:
        config = OobmConfig(
            driver=oobm.driver,
            address=oobm.address,
            username=oobm.username,
            password=password,
            port=oobm.port,
            host_id=entry.id,
        )
        result = driver.execute(config, PowerOperation.STATUS, timeout=timeout)
    except Exception as exc:  # every failure is this host's answer
        return CredentialCheck(entry.id, "bmc", False, f"{where}: {_reason(exc, password)}")
    if not result.success:
        message = redact(" ".join(result.message.split()), password) or "no answer"
        return CredentialCheck(entry.id, "bmc", False, f"{where}: {message}")
    state = str(result.state).lower() if result.state is not None else "unknown"
    return CredentialCheck(entry.id, "bmc", True, f"{where}: power {state}")


def _drivers(inventory: Inventory) -> dict[str, Any]:
    if not any(h.oobm is not None for h in inventory.hosts):
        return {}
    from cloudha.oobm.drivers import default_power_drivers

    return {d.name: d for d in default_power_drivers(inventory.settings)}


def check_credentials(
    inventory: Inventory,
    *,
    timeout: float = 10.0,
    hosts: Sequence[str] | None = None,
    parallel: int = 8,
    drivers: dict[str, Any] | None = None,
) -> list[CredentialCheck]:
    """Try every host's SSH, libvirt and BMC (see the module); results in host, then part order.

    Args:
        timeout: seconds each try may take.
        hosts: only these host ids (default: all).
        parallel: hosts tried at once.
        drivers: power drivers by name (default: the built-in ones, set up
            by the inventory's settings).
    """
    chosen = [h for h in inventory.hosts if hosts is None or h.id in hosts]
    found = _drivers(inventory) if drivers is None else drivers

    def one(entry: HostEntry) -> list[CredentialCheck]:
        tries: list[Callable[[], CredentialCheck]] = [
            lambda: _ssh(entry, timeout),
            lambda: _libvirt(entry, timeout),
            lambda: _bmc(entry, timeout, found),
        ]
        return [attempt() for attempt in tries]

    if not chosen:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(parallel, len(chosen)))) as pool:
        results = list(pool.map(one, chosen))
    return [check for checks in results for check in checks]
