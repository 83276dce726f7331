"""A :class:`~cloudha.ports.HypervisorProbe` over libvirt: ask a host's libvirtd directly.

It is also a :class:`~cloudha.ports.HypervisorControl`: it can destroy
(hard-stop) a domain and read its state back, for the libvirt fencer.

:class:`LibvirtHypervisorProbe` opens one libvirt connection per call, asks
its question and closes the connection again. Nothing is cached between
calls, so a host that restarts its libvirtd is seen afresh on the next call.

libvirt has no connect timeout (a new connection to a partitioned address
blocks for minutes, and a call to a hung daemon blocks until keepalive gives
up), so every call runs in its own daemon worker thread and the caller
waits for it at most ``timeout`` seconds. A worker that misses its deadline
is *abandoned*, not killed: it goes on until libvirt returns (keepalive or
the operating system ends the connection) and then closes its connection
itself. :attr:`LibvirtHypervisorProbe.lingering` counts such workers.

Process-wide side effects, all deferred to the first probe (importing this
module does nothing of the kind):

* libvirt's default event loop implementation is registered
  (``virEventRegisterDefaultImpl``) and run by one daemon thread named
  ``cloudha-libvirt-events``; keepalive needs it. An application that
  registers its own libvirt event implementation (e.g. ``libvirtaio``)
  must do so before the first probe and should not use this module.
* libvirt's default error handler, which prints every error to stderr, is
  replaced by one that prints nothing (errors are still raised).

libvirt-python is the ``libvirt`` extra (``pip install 'cloudha[libvirt]'``):
this module imports without it, and building a :class:`LibvirtHypervisorProbe`
then raises :class:`~cloudha.errors.MissingExtraError`.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import string
import threading
import urllib.parse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, TypeVar

from cloudha._extras import lazy_module, require
from cloudha.deadline import DeadlineExceeded, DeadlineRunner
from cloudha.errors import (
    ConfigurationError,
    ProbeAuthError,
    ProbeConnectionError,
    ProbeError,
    ProbeTimeout,
)
from cloudha.model import Host
from cloudha.ports import DomainState, HypervisorReport
from cloudha.redact import REDACTED, redact

if TYPE_CHECKING:
    import libvirt
else:
    libvirt = lazy_module("libvirt", "libvirt", "the libvirt probe")

__all__ = [
    "DEFAULT_URI_TEMPLATE",
    "EVENT_LOOP_THREAD_NAME",
    "LibvirtHypervisorProbe",
    "redact_uri",
]

log = logging.getLogger(__name__)

_T = TypeVar("_T")

DEFAULT_URI_TEMPLATE: Final = "qemu+ssh://root@{ip}/system"
"""The default URI template: the system libvirtd of the host's private address, over SSH."""

EVENT_LOOP_THREAD_NAME: Final = "cloudha-libvirt-events"
"""Name of the daemon thread that runs libvirt's default event loop."""

_TEMPLATE_FIELDS: Final = frozenset({"ip", "name", "id"})


def _is_auth_error(code: int) -> bool:
    """Whether a libvirt error code reports an authentication failure."""
    return code in (
        libvirt.VIR_ERR_AUTH_FAILED,
        libvirt.VIR_ERR_AUTH_CANCELLED,
        libvirt.VIR_ERR_AUTH_UNAVAILABLE,
    )


def _domain_states() -> dict[int, DomainState]:
    return {
        libvirt.VIR_DOMAIN_RUNNING: DomainState.RUNNING,
        libvirt.VIR_DOMAIN_BLOCKED: DomainState.RUNNING,
        libvirt.VIR_DOMAIN_PAUSED: DomainState.RUNNING,
        libvirt.VIR_DOMAIN_SHUTOFF: DomainState.SHUTOFF,
        libvirt.VIR_DOMAIN_CRASHED: DomainState.SHUTOFF,
    }


_SENSITIVE_KEY_PARTS: Final = ("pass", "secret")
"""Query keys containing one of these (``password``, ``passwd``...) have their values redacted."""


# --------------------------------------------------------------------------
# Process-wide libvirt set-up (lazy, once)

_loop_lock = threading.Lock()
_loop_thread: threading.Thread | None = None


def _discard_libvirt_error(_ctx: object, _err: object) -> None:
    """libvirt error handler that prints nothing (errors are still raised)."""


def _run_event_loop() -> None:
    pause = threading.Event()  # never set: an interruptible pause after an error
    while True:
        try:
            libvirt.virEventRunDefaultImpl()
        except Exception:
            log.exception("libvirt event loop iteration failed")
            pause.wait(0.1)


def _ensure_event_loop() -> None:
    """Silence libvirt's stderr, register its default event loop and start its thread, once."""
    global _loop_thread
    with _loop_lock:
        if _loop_thread is not None:
            return
        libvirt.registerErrorHandler(_discard_libvirt_error, None)
        libvirt.virEventRegisterDefaultImpl()
        thread = threading.Thread(target=_run_event_loop, name=EVENT_LOOP_THREAD_NAME, daemon=True)
        thread.start()
        _loop_thread = thread


# --------------------------------------------------------------------------
# URIs


def _parse_template(template: object) -> str:
    """Check ``template`` (only ``{ip}``, ``{name}``, ``{id}``; no conversions or specs)."""
    if not isinstance(template, str) or not template.strip():
        raise ConfigurationError(
            "uri_template must be a non-empty string", key="uri_template", value=template
        )
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ConfigurationError(
            f"uri_template {template!r} is malformed: {exc}", key="uri_template", value=template
        ) from exc
    allowed = ", ".join(f"{{{f}}}" for f in sorted(_TEMPLATE_FIELDS))
    for _literal, field, spec, conversion in parsed:
        if field is None:
            continue
        if field not in _TEMPLATE_FIELDS:
            raise ConfigurationError(
                f"uri_template {template!r} uses unknown field {{{field}}}; allowed: {allowed}",
                key="uri_template",
                value=template,
            )
        if spec or conversion:
            raise ConfigurationError(
                f"uri_template {template!r}: field {{{field}}} takes no conversion or format spec",
                key="uri_template",
                value=template,
            )
    return template


def _template_fields(template: str) -> frozenset[str]:
    return frozenset(f for _lit, f, _spec, _conv in string.Formatter().parse(template) if f)


def _is_sensitive(key: str) -> bool:
    lowered = urllib.parse.unquote_plus(key).lower()
    return any(part in lowered for part in _SENSITIVE_KEY_PARTS)


def redact_uri(uri: str) -> tuple[str, tuple[str, ...]]:
    """``uri`` without secrets, and the secrets found (to scrub from messages too).

    Removes the password of the userinfo (``user:pw@host`` becomes
    ``user:***@host``) and the values of query keys named like a password
    (``password``, ``passwd``, ``passphrase``, ``secret``...). A URI that
    cannot be parsed is replaced as a whole.
    """
    try:
        parts = urllib.parse.urlsplit(uri)
    except ValueError:
        return "<unparsable libvirt URI>", (uri,)
    secrets: list[str] = []
    netloc = parts.netloc
    userinfo, at, hostport = netloc.rpartition("@")
    if at and ":" in userinfo:
        user, _colon, password = userinfo.partition(":")
        if password:
            secrets += [password, urllib.parse.unquote(password)]
        netloc = f"{user}:{REDACTED}@{hostport}"
    items = []
    for item in parts.query.split("&") if parts.query else []:
        key, eq, value = item.partition("=")
        if eq and value and _is_sensitive(key):
            secrets += [value, urllib.parse.unquote_plus(value)]
            item = f"{key}={REDACTED}"
        items.append(item)
    query = "&".join(items)
    if netloc == parts.netloc and query == parts.query:
        return uri, ()
    rest = uri[len(parts.scheme) + 1 :] if parts.scheme else uri
    shown = f"{parts.scheme}:" if parts.scheme else ""
    if rest.startswith("//"):
        shown += f"//{netloc}"
    shown += parts.path
    if query:
        shown += f"?{query}"
    if parts.fragment:
        shown += f"#{parts.fragment}"
    return shown, tuple(s for s in secrets if s)


def _scrub(text: str, secrets: tuple[str, ...]) -> str:
    return redact(text, *secrets)


# --------------------------------------------------------------------------
# Worker calls


def _fold_state(state: int) -> DomainState:
    return _domain_states().get(state, DomainState.OTHER)


def _check_timeout(timeout: float) -> float:
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not math.isfinite(timeout)
        or timeout <= 0
    ):
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    return float(timeout)


class LibvirtHypervisorProbe:
    """The :class:`~cloudha.ports.HypervisorProbe` and
    :class:`~cloudha.ports.HypervisorControl` ports over libvirt.

    Each call opens a connection to the URI made from ``uri_template`` for
    the host, asks its question, and closes the connection, all in a daemon
    worker thread; the caller never waits more than ``timeout`` (plus thread
    start-up, well under a millisecond). Thread-safe: calls from many threads
    at once each use their own connection.

    Args:
        uri_template: the libvirt URI of a host, with the fields ``{ip}``
            (``host.private_ip``, checked to be an IPv4/IPv6 address and
            bracketed when IPv6), ``{name}`` (``host.name``) and ``{id}``
            (``host.id``), the last two percent-encoded so no host name can
            change the URI's structure. Examples:
            ``"qemu+ssh://root@{ip}/system?no_tty=1"``,
            ``"qemu+tls://{ip}/system"``, ``"test+tcp://{ip}:16509/default"``.
            For unattended use over SSH, key-based authentication and
            ``no_tty=1`` (or ``keyfile=``/``known_hosts=``) are advisable.
        keepalive_interval: seconds between keepalive messages on each
            connection (``virConnectSetKeepAlive``); at least 1.
        keepalive_count: unanswered keepalive messages before libvirt closes
            a connection; a hung daemon is detected after about
            ``keepalive_interval * (keepalive_count + 1)`` seconds, which
            bounds how long an abandoned worker lingers once connected.
        uri_of: each host's own URI, instead of the template (an inventory
            that names every host's libvirt URI, ``cloudha run``); a
            :class:`KeyError` from it (a host it does not know) is a
            :class:`~cloudha.errors.ProbeConnectionError`.

    Raises:
        MissingExtraError: libvirt-python is not installed (``pip install 'cloudha[libvirt]'``).
        ConfigurationError: ``uri_template`` has an unknown field, a
            conversion or format spec, or is malformed (``key="uri_template"``);
            a keepalive setting is out of range (``key`` names it).

    Errors of the probe calls (all carry ``host_id=host.id``; messages and
    logs never show a password from the URI):

    * :class:`~cloudha.errors.ProbeTimeout`: no answer within ``timeout``, or
      libvirt closed the connection on a keepalive timeout.
    * :class:`~cloudha.errors.ProbeAuthError`: libvirt reported an
      authentication failure (``VIR_ERR_AUTH_FAILED``/``_CANCELLED``/``_UNAVAILABLE``).
    * :class:`~cloudha.errors.ProbeConnectionError`: any other libvirt error,
      or a host without a (valid) private address when ``{ip}`` is used.
    """

    def __init__(
        self,
        uri_template: str = DEFAULT_URI_TEMPLATE,
        *,
        keepalive_interval: int = 5,
        keepalive_count: int = 3,
        uri_of: Callable[[Host], str] | None = None,
    ) -> None:
        require("libvirt", "libvirt", "the libvirt probe")
        self._uri_of = uri_of
        self._template = _parse_template(uri_template)
        self._fields = _template_fields(self._template)
        if (
            isinstance(keepalive_interval, bool)
            or not isinstance(keepalive_interval, int)
            or keepalive_interval < 1
        ):
            raise ConfigurationError(
                f"keepalive_interval must be a whole number of seconds >= 1, "
                f"got {keepalive_interval!r}",
                key="keepalive_interval",
                value=keepalive_interval,
            )
        if (
            isinstance(keepalive_count, bool)
            or not isinstance(keepalive_count, int)
            or keepalive_count < 0
        ):
            raise ConfigurationError(
                f"keepalive_count must be a whole number >= 0, got {keepalive_count!r}",
                key="keepalive_count",
                value=keepalive_count,
            )
        self.keepalive_interval = keepalive_interval
        self.keepalive_count = keepalive_count
        self._runner = DeadlineRunner("libvirt probe")

    @property
    def uri_template(self) -> str:
        """The URI template this probe fills for each host."""
        return self._template

    @property
    def lingering(self) -> int:
        """Workers abandoned on a timeout that have not returned yet (connections still open)."""
        return self._runner.lingering

    def __repr__(self) -> str:
        shown, _ = redact_uri(self._template)
        return f"{type(self).__name__}(uri_template={shown!r})"

    # -- URIs ----------------------------------------------------------------

    def uri_for(self, host: Host) -> str:
        """The libvirt URI of ``host``: the template filled in.

        The result is what is opened, so it may hold credentials written in
        the template; use :func:`redact_uri` before showing it.

        Raises:
            ProbeConnectionError: the template uses ``{ip}`` and the host has
                no private address, or one that is not an IPv4/IPv6 address.
        """
        if self._uri_of is not None:
            try:
                return self._uri_of(host)
            except KeyError:
                raise ProbeConnectionError(
                    f"host {host.id} has no libvirt URI", host_id=host.id
                ) from None
        values: dict[str, str] = {}
        if "ip" in self._fields:
            values["ip"] = self._ip_of(host)
        if "name" in self._fields:
            values["name"] = urllib.parse.quote(host.name, safe="")
        if "id" in self._fields:
            values["id"] = urllib.parse.quote(host.id, safe="")
        return self._template.format(**values)

    @staticmethod
    def _ip_of(host: Host) -> str:
        if not host.private_ip:
            raise ProbeConnectionError(
                f"host {host.id} has no private address to reach its hypervisor at",
                host_id=host.id,
            )
        try:
            address = ipaddress.ip_address(host.private_ip)
        except ValueError:
            raise ProbeConnectionError(
                f"host {host.id} has an invalid private address {host.private_ip!r}",
                host_id=host.id,
            ) from None
        if isinstance(address, ipaddress.IPv6Address):
            return "[" + str(address).replace("%", "%25") + "]"
        return str(address)

    # -- the port --------------------------------------------------------------

    def probe_host(self, host: Host, *, timeout: float) -> HypervisorReport:
        """Connect to ``host``'s libvirtd and ask its hostname, version and domain count.

        Returns:
            ``HypervisorReport(uri, hostname, version, running_domains, domains)``:
            the URI with any password redacted, ``getHostname()``,
            ``getLibVersion()`` (e.g. 9000000 for 9.0.0), the number of active
            domains and their names (``listAllDomains(ACTIVE)``; the agent
            poller's VM report, :class:`cloudha.detection.poller.HypervisorPoller`).

        Raises:
            ValueError: ``timeout`` is not a positive finite number.
            ProbeTimeout, ProbeAuthError, ProbeConnectionError: see the class.
        """
        timeout = _check_timeout(timeout)
        uri = self.uri_for(host)
        shown, _secrets = redact_uri(uri)

        def ask(conn: Any) -> HypervisorReport:
            active = conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
            return HypervisorReport(
                uri=shown,
                hostname=str(conn.getHostname()),
                version=int(conn.getLibVersion()),
                running_domains=len(active),
                domains=frozenset(str(dom.name()) for dom in active),
            )

        return self._call(host, uri, timeout, ask)

    def domain_state(self, host: Host, domain: str, *, timeout: float) -> DomainState:
        """The state of the domain named ``domain`` on ``host``, folded.

        ``RUNNING`` for running, blocked or paused; ``SHUTOFF`` for shut off or
        crashed; ``MISSING`` when libvirt has no such domain
        (``VIR_ERR_NO_DOMAIN``); ``OTHER`` for anything else (no state,
        shutting down, pm-suspended, a state this code does not know).

        Raises:
            ValueError: ``domain`` is empty or ``timeout`` is not a positive
                finite number.
            ProbeTimeout, ProbeAuthError, ProbeConnectionError: see the class.
        """
        if not isinstance(domain, str) or not domain:
            raise ValueError(f"domain must be a non-empty name, got {domain!r}")
        timeout = _check_timeout(timeout)
        uri = self.uri_for(host)

        def ask(conn: Any) -> DomainState:
            try:
                state, _reason = conn.lookupByName(domain).state()
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    return DomainState.MISSING
                raise
            return _fold_state(int(state))

        return self._call(host, uri, timeout, ask)

    def destroy_domain(self, host: Host, domain: str, *, timeout: float) -> DomainState:
        """Hard-stop the domain named ``domain`` on ``host`` and return its state read back.

        Looks the domain up by name; if it is active (running, paused,
        shutting down...) calls ``destroy()`` (libvirt's immediate power-off,
        never a graceful shutdown), then reads the state back. A domain that
        is already inactive is left alone. The state returned is the folded
        state read after the action, as by :meth:`domain_state`:
        ``SHUTOFF`` (or ``MISSING`` for a transient domain, which libvirt
        forgets once it stops) when the destroy worked; ``MISSING`` when
        there never was such a domain. A domain that stopped on its own
        between the check and the destroy is not an error.

        This makes :class:`LibvirtHypervisorProbe` a
        :class:`~cloudha.ports.HypervisorControl`.

        Raises:
            ValueError: ``domain`` is empty or ``timeout`` is not a positive
                finite number.
            ProbeTimeout, ProbeAuthError, ProbeConnectionError: see the class;
                also when libvirt refuses the destroy itself. On a timeout the
                destroy may still happen later: read the state again.
        """
        if not isinstance(domain, str) or not domain:
            raise ValueError(f"domain must be a non-empty name, got {domain!r}")
        timeout = _check_timeout(timeout)
        uri = self.uri_for(host)

        def act(conn: Any) -> DomainState:
            try:
                dom = conn.lookupByName(domain)
                if dom.isActive():
                    try:
                        dom.destroy()
                    except libvirt.libvirtError as exc:
                        # It stopped by itself in between: the read-back decides.
                        if exc.get_error_code() != libvirt.VIR_ERR_OPERATION_INVALID:
                            raise
                state, _reason = dom.state()
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    return DomainState.MISSING
                raise
            return _fold_state(int(state))

        return self._call(host, uri, timeout, act)

    def close(self) -> None:
        """Release what the probe holds: nothing, as connections live for one call.

        Idempotent. Abandoned workers are not waited for; they close their
        own connections when libvirt returns. The probe stays usable.
        """

    def __enter__(self) -> LibvirtHypervisorProbe:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- plumbing --------------------------------------------------------------

    def _call(self, host: Host, uri: str, timeout: float, ask: Callable[[Any], _T]) -> _T:
        shown, secrets = redact_uri(uri)
        try:
            _ensure_event_loop()
        except libvirt.libvirtError as exc:
            raise ProbeConnectionError(
                f"cannot start libvirt's event loop: {_scrub(str(exc), secrets)}",
                host_id=host.id,
            ) from None
        try:
            return self._runner.run(
                lambda _ticket: self._work(uri, shown, ask), timeout, label=f"{host.id} at {shown}"
            )
        except DeadlineExceeded:
            raise ProbeTimeout(
                f"libvirt on host {host.id} ({shown}) did not answer within {timeout:.3g} s",
                host_id=host.id,
            ) from None
        except libvirt.libvirtError as exc:
            raise self._map_error(exc, host, shown, secrets) from None

    def _work(self, uri: str, shown: str, ask: Callable[[Any], _T]) -> _T:
        """In the worker: open, ask, and always close the connection."""
        conn: Any = libvirt.open(uri)
        try:
            try:
                conn.setKeepAlive(self.keepalive_interval, self.keepalive_count)
            except libvirt.libvirtError as exc:
                log.debug("libvirt at %s has no keepalive: %s", shown, exc)
            return ask(conn)
        finally:
            try:
                conn.close()
            except libvirt.libvirtError as exc:
                log.debug("closing the libvirt connection to %s failed: %s", shown, exc)

    @staticmethod
    def _map_error(exc: Any, host: Host, shown: str, secrets: tuple[str, ...]) -> ProbeError:
        message = _scrub(str(exc), secrets)
        code = exc.get_error_code()
        if _is_auth_error(code):
            return ProbeAuthError(
                f"libvirt on host {host.id} ({shown}) refused authentication: {message}",
                host_id=host.id,
            )
        if "keepalive" in message.lower():
            return ProbeTimeout(
                f"libvirt on host {host.id} ({shown}) stopped answering "
                f"(keepalive timeout): {message}",
                host_id=host.id,
            )
        return ProbeConnectionError(
            f"libvirt on host {host.id} ({shown}) failed: {message}", host_id=host.id
        )
