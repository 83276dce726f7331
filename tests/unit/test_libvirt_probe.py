"""LibvirtHypervisorProbe without a daemon: validation, URIs, error mapping, timeouts.

libvirt itself is real here: the in-process ``test:///default`` driver, or
``libvirt.open`` replaced by fakes that raise real ``libvirtError`` objects.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

import libvirt
import pytest

from cloudha.errors import (
    ConfigurationError,
    ProbeAuthError,
    ProbeConnectionError,
    ProbeError,
    ProbeTimeout,
)
from cloudha.model import Host
from cloudha.ports import DomainState, HypervisorControl, HypervisorProbe, HypervisorReport
from cloudha.transport.libvirt import (
    DEFAULT_URI_TEMPLATE,
    EVENT_LOOP_THREAD_NAME,
    LibvirtHypervisorProbe,
    redact_uri,
)

HOST = Host("h-1", name="hv1", private_ip="192.0.2.10")


def libvirt_error(code: int | None, message: str = "boom") -> Any:
    """A real ``libvirtError`` carrying ``code`` (as libvirt would have filled it)."""
    exc = libvirt.libvirtError(message)
    exc.args = (message,)
    exc.err = (
        None
        if code is None
        else (
            code,
            libvirt.VIR_FROM_RPC,
            message,
            libvirt.VIR_ERR_ERROR,
            message,
            None,
            None,
            -1,
            -1,
        )
    )
    return exc


class FakeDomain:
    def __init__(self, state: int | BaseException, name: str = "") -> None:
        self._state = state
        self._name = name

    def name(self) -> str:
        return self._name

    def state(self) -> list[int]:
        if isinstance(self._state, BaseException):
            raise self._state
        return [self._state, 0]


class FakeConn:
    """What ``libvirt.open`` returns, scripted; counts ``close()`` calls."""

    def __init__(
        self,
        domains: dict[str, FakeDomain] | None = None,
        *,
        lookup_error: BaseException | None = None,
        keepalive_error: bool = False,
        close_error: bool = False,
    ) -> None:
        self.domains = domains or {}
        self.lookup_error = lookup_error
        self.keepalive_error = keepalive_error
        self.close_error = close_error
        self.keepalive: tuple[int, int] | None = None
        self.closed = 0

    def setKeepAlive(self, interval: int, count: int) -> int:
        self.keepalive = (interval, count)
        if self.keepalive_error:
            raise libvirt_error(libvirt.VIR_ERR_NO_SUPPORT, "not supported: virConnectSetKeepAlive")
        return 0

    def getHostname(self) -> str:
        return "fake-host"

    def getLibVersion(self) -> int:
        return 9_000_000

    def listAllDomains(self, flags: int = 0) -> list[FakeDomain]:
        assert flags == libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE
        return [FakeDomain(libvirt.VIR_DOMAIN_RUNNING, f"vm-{i}") for i in (1, 2, 3)]

    def lookupByName(self, name: str) -> FakeDomain:
        if self.lookup_error is not None:
            raise self.lookup_error
        if name not in self.domains:
            raise libvirt_error(libvirt.VIR_ERR_NO_DOMAIN, "Domain not found")
        return self.domains[name]

    def close(self) -> int:
        self.closed += 1
        if self.close_error:
            raise libvirt_error(libvirt.VIR_ERR_INTERNAL_ERROR, "close failed")
        return 0


def wait_until(predicate: Callable[[], bool], *, within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> Callable[..., list[str]]:
    """``opened(result)``: make ``libvirt.open`` return or raise ``result``; returns the URIs."""

    def install(result: Any) -> list[str]:
        uris: list[str] = []

        def fake_open(uri: str) -> Any:
            uris.append(uri)
            if isinstance(result, BaseException):
                raise result
            return result

        monkeypatch.setattr(libvirt, "open", fake_open)
        return uris

    return install


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    """An event a fake ``libvirt.open`` blocks on; always released at teardown."""
    event = threading.Event()
    yield event
    event.set()


# -- construction and templates --------------------------------------------------------


def test_the_probe_implements_the_port() -> None:
    probe = LibvirtHypervisorProbe()
    assert isinstance(probe, HypervisorProbe)
    assert probe.uri_template == DEFAULT_URI_TEMPLATE == "qemu+ssh://root@{ip}/system"


@pytest.mark.parametrize(
    "template",
    [
        "qemu+ssh://root@{host}/system",
        "qemu+ssh://root@{}/system",
        "qemu+ssh://root@{0}/system",
        "qemu+ssh://root@{ip.__class__}/system",
        "qemu+ssh://root@{ip[0]}/system",
        "qemu+ssh://root@{ip!r}/system",
        "qemu+ssh://root@{ip:>20}/system",
        "qemu+ssh://root@{ip/system",
        "qemu+ssh://root@ip}/system",
        "",
        "   ",
    ],
)
def test_a_bad_template_is_a_configuration_error(template: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        LibvirtHypervisorProbe(template)
    assert info.value.key == "uri_template"


def test_a_non_string_template_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError) as info:
        LibvirtHypervisorProbe(None)  # type: ignore[arg-type]
    assert info.value.key == "uri_template"


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"keepalive_interval": 0}, "keepalive_interval"),
        ({"keepalive_interval": 1.5}, "keepalive_interval"),
        ({"keepalive_interval": True}, "keepalive_interval"),
        ({"keepalive_count": -1}, "keepalive_count"),
        ({"keepalive_count": "3"}, "keepalive_count"),
    ],
)
def test_bad_keepalive_settings_are_configuration_errors(kwargs: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        LibvirtHypervisorProbe(**kwargs)
    assert info.value.key == key


def test_literal_braces_and_fieldless_templates_are_fine() -> None:
    probe = LibvirtHypervisorProbe("test:///default?x={{literal}}")
    assert probe.uri_for(Host("no-ip")) == "test:///default?x={literal}"


@pytest.mark.parametrize(
    ("ip", "expected"),
    [
        ("10.1.2.3", "qemu+ssh://root@10.1.2.3/system"),
        ("2001:db8::1", "qemu+ssh://root@[2001:db8::1]/system"),
        ("2001:DB8:0:0::1", "qemu+ssh://root@[2001:db8::1]/system"),
        ("fe80::1%eth0", "qemu+ssh://root@[fe80::1%25eth0]/system"),
    ],
)
def test_uri_for_fills_a_checked_ip(ip: str, expected: str) -> None:
    assert LibvirtHypervisorProbe().uri_for(Host("h", private_ip=ip)) == expected


@pytest.mark.parametrize(
    "ip", ["10.1.2.3/system?x=", "evil.example", "10.1.2.3@other", "999.1.1.1", " 10.1.2.3"]
)
def test_uri_for_refuses_an_address_that_is_not_an_ip(ip: str) -> None:
    with pytest.raises(ProbeConnectionError, match="h-bad") as info:
        LibvirtHypervisorProbe().uri_for(Host("h-bad", private_ip=ip))
    assert info.value.host_id == "h-bad"


def test_uri_for_needs_an_address_only_when_the_template_uses_it() -> None:
    with pytest.raises(ProbeConnectionError, match="no-ip") as info:
        LibvirtHypervisorProbe().uri_for(Host("no-ip"))
    assert info.value.host_id == "no-ip"
    by_name = LibvirtHypervisorProbe("qemu+ssh://root@{name}/system")
    assert by_name.uri_for(Host("no-ip", name="kvm-7")) == "qemu+ssh://root@kvm-7/system"


def test_a_hostile_name_or_id_cannot_change_the_uri_structure() -> None:
    probe = LibvirtHypervisorProbe("qemu+ssh://root@{name}.lab/system?tag={id}")
    uri = probe.uri_for(Host("x&keyfile=/etc/shadow", name="a/b?c#d@e"))
    assert uri == "qemu+ssh://root@a%2Fb%3Fc%23d%40e.lab/system?tag=x%26keyfile%3D%2Fetc%2Fshadow"
    parts = urllib.parse.urlsplit(uri)
    assert (parts.hostname or "").lower() == "a%2fb%3fc%23d%40e.lab"
    assert parts.path == "/system"
    assert parts.fragment == ""
    assert urllib.parse.parse_qs(parts.query) == {"tag": ["x&keyfile=/etc/shadow"]}


# -- redaction -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "shown", "secrets"),
    [
        ("test:///default", "test:///default", ()),
        ("qemu+ssh://root@10.0.0.1/system", "qemu+ssh://root@10.0.0.1/system", ()),
        (
            "qemu+ssh://root:hunter2@10.0.0.1/system",
            "qemu+ssh://root:***@10.0.0.1/system",
            ("hunter2",),
        ),
        (
            "qemu+tcp://u:p%40ss@[2001:db8::1]:16509/system?no_tty=1",
            "qemu+tcp://u:***@[2001:db8::1]:16509/system?no_tty=1",
            ("p%40ss", "p@ss"),
        ),
        (
            "test+unix:///default?socket=/run/x/sock&password=s3cret&Passwd=two&passphrase=3",
            "test+unix:///default?socket=/run/x/sock&password=***&Passwd=***&passphrase=***",
            ("s3cret", "two", "3"),
        ),
    ],
)
def test_redact_uri(uri: str, shown: str, secrets: tuple[str, ...]) -> None:
    redacted, found = redact_uri(uri)
    assert redacted == shown
    assert set(secrets) <= set(found)


def test_an_unparsable_uri_is_hidden_entirely() -> None:
    shown, found = redact_uri("qemu+ssh://root:pw@[::1/system")
    assert "pw" not in shown
    assert found


def test_repr_shows_no_password() -> None:
    probe = LibvirtHypervisorProbe("qemu+ssh://root:hunter2@{ip}/system")
    assert "hunter2" not in repr(probe)


# -- argument checks -------------------------------------------------------------------


@pytest.mark.parametrize("timeout", [0, -1.0, float("nan"), float("inf"), True, "1"])
def test_a_bad_timeout_is_a_value_error(timeout: Any) -> None:
    probe = LibvirtHypervisorProbe("test:///default")
    with pytest.raises(ValueError, match="timeout"):
        probe.probe_host(HOST, timeout=timeout)
    with pytest.raises(ValueError, match="timeout"):
        probe.domain_state(HOST, "test", timeout=timeout)


def test_an_empty_domain_name_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="domain"):
        LibvirtHypervisorProbe("test:///default").domain_state(HOST, "", timeout=1.0)


def test_a_missing_address_fails_before_anything_is_opened(
    opened: Callable[..., list[str]],
) -> None:
    uris = opened(FakeConn())
    with pytest.raises(ProbeConnectionError):
        LibvirtHypervisorProbe().probe_host(Host("no-ip"), timeout=1.0)
    assert uris == []


# -- the in-process test driver --------------------------------------------------------


def test_probe_host_against_the_in_process_test_driver() -> None:
    probe = LibvirtHypervisorProbe("test:///default")
    report = probe.probe_host(HOST, timeout=5.0)
    assert report.uri == "test:///default"
    assert report.hostname
    assert report.version == libvirt.getVersion()
    assert report.running_domains == 1


def test_domain_state_against_the_in_process_test_driver() -> None:
    probe = LibvirtHypervisorProbe("test:///default")
    holder = libvirt.open("test:///default")  # keeps the shared default state alive
    try:
        test = holder.lookupByName("test")
        assert probe.domain_state(HOST, "test", timeout=5.0) is DomainState.RUNNING
        test.suspend()
        assert probe.domain_state(HOST, "test", timeout=5.0) is DomainState.RUNNING
        test.resume()
        test.destroy()
        assert probe.domain_state(HOST, "test", timeout=5.0) is DomainState.SHUTOFF
        test.create()
        assert probe.domain_state(HOST, "test", timeout=5.0) is DomainState.RUNNING
        assert probe.domain_state(HOST, "no-such-vm", timeout=5.0) is DomainState.MISSING
    finally:
        test = holder.lookupByName("test")
        if not test.isActive():
            test.create()
        del test
        holder.close()


def test_the_event_loop_thread_runs_once_probed() -> None:
    LibvirtHypervisorProbe("test:///default").probe_host(HOST, timeout=5.0)
    loops = [t for t in threading.enumerate() if t.name == EVENT_LOOP_THREAD_NAME]
    assert len(loops) == 1
    assert loops[0].daemon


def _run_python(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_importing_the_module_starts_nothing() -> None:
    out = _run_python(
        "import threading, cloudha.transport.libvirt as m\n"
        "print(m._loop_thread is None, [t.name for t in threading.enumerate()])\n"
    )
    assert out == "True ['MainThread']"


def test_concurrent_first_probes_start_one_event_loop() -> None:
    out = _run_python(
        "import threading\n"
        "from cloudha.model import Host\n"
        "from cloudha.transport.libvirt import LibvirtHypervisorProbe, EVENT_LOOP_THREAD_NAME\n"
        "probe = LibvirtHypervisorProbe('test:///default')\n"
        "barrier = threading.Barrier(8)\n"
        "results = []\n"
        "def one(i):\n"
        "    barrier.wait()\n"
        "    results.append(probe.probe_host(Host(f'h{i}', private_ip='127.0.0.1'), timeout=10))\n"
        "threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]\n"
        "[t.start() for t in threads]; [t.join() for t in threads]\n"
        "loops = [t for t in threading.enumerate() if t.name == EVENT_LOOP_THREAD_NAME]\n"
        "print(len(results), len(loops))\n"
    )
    assert out == "8 1"


# -- fakes: state folding, keepalive, closing ------------------------------------------


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        (libvirt.VIR_DOMAIN_NOSTATE, DomainState.OTHER),
        (libvirt.VIR_DOMAIN_RUNNING, DomainState.RUNNING),
        (libvirt.VIR_DOMAIN_BLOCKED, DomainState.RUNNING),
        (libvirt.VIR_DOMAIN_PAUSED, DomainState.RUNNING),
        (libvirt.VIR_DOMAIN_SHUTDOWN, DomainState.OTHER),
        (libvirt.VIR_DOMAIN_SHUTOFF, DomainState.SHUTOFF),
        (libvirt.VIR_DOMAIN_CRASHED, DomainState.SHUTOFF),
        (libvirt.VIR_DOMAIN_PMSUSPENDED, DomainState.OTHER),
        (99, DomainState.OTHER),
    ],
)
def test_domain_states_are_folded(
    opened: Callable[..., list[str]], state: int, expected: DomainState
) -> None:
    conn = FakeConn({"vm-1": FakeDomain(state)})
    uris = opened(conn)
    probe = LibvirtHypervisorProbe(keepalive_interval=7, keepalive_count=2)
    assert probe.domain_state(HOST, "vm-1", timeout=5.0) is expected
    assert uris == ["qemu+ssh://root@192.0.2.10/system"]
    assert conn.keepalive == (7, 2)
    assert conn.closed == 1


def test_a_domain_that_vanishes_between_lookup_and_state_is_missing(
    opened: Callable[..., list[str]],
) -> None:
    gone = libvirt_error(libvirt.VIR_ERR_NO_DOMAIN, "Domain not found")
    conn = FakeConn({"vm-1": FakeDomain(gone)})
    opened(conn)
    assert LibvirtHypervisorProbe().domain_state(HOST, "vm-1", timeout=5.0) is DomainState.MISSING
    assert conn.closed == 1


def test_probe_host_reports_what_libvirt_said(opened: Callable[..., list[str]]) -> None:
    conn = FakeConn(keepalive_error=True, close_error=True)  # both only logged
    opened(conn)
    probe = LibvirtHypervisorProbe("qemu+ssh://root:hunter2@{ip}/system")
    report = probe.probe_host(HOST, timeout=5.0)
    assert report == HypervisorReport(
        uri="qemu+ssh://root:***@192.0.2.10/system",
        hostname="fake-host",
        version=9_000_000,
        running_domains=3,
        domains=frozenset({"vm-1", "vm-2", "vm-3"}),
    )
    assert conn.closed == 1


# -- error mapping ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "message", "expected"),
    [
        (libvirt.VIR_ERR_AUTH_FAILED, "authentication failed", ProbeAuthError),
        (libvirt.VIR_ERR_AUTH_CANCELLED, "authentication cancelled", ProbeAuthError),
        (libvirt.VIR_ERR_AUTH_UNAVAILABLE, "authentication unavailable", ProbeAuthError),
        (
            libvirt.VIR_ERR_SYSTEM_ERROR,
            "unable to connect: Connection refused",
            ProbeConnectionError,
        ),
        (libvirt.VIR_ERR_NO_CONNECT, "no connection driver available", ProbeConnectionError),
        (libvirt.VIR_ERR_NO_DOMAIN, "Domain not found", ProbeConnectionError),  # from open()
        (
            libvirt.VIR_ERR_INTERNAL_ERROR,
            "internal error: connection closed due to keepalive timeout",
            ProbeTimeout,
        ),
        (None, "no error details", ProbeConnectionError),
    ],
)
def test_libvirt_errors_are_mapped(
    opened: Callable[..., list[str]],
    code: int | None,
    message: str,
    expected: type[ProbeError],
) -> None:
    opened(libvirt_error(code, message))
    probe = LibvirtHypervisorProbe()
    for call in (
        lambda: probe.probe_host(HOST, timeout=5.0),
        lambda: probe.domain_state(HOST, "vm-1", timeout=5.0),
    ):
        with pytest.raises(ProbeError) as info:
            call()
        assert type(info.value) is expected
        assert info.value.host_id == "h-1"
        assert message in str(info.value)
        assert "h-1" in str(info.value)
        assert info.value.__cause__ is None  # the raw libvirt message may hold secrets


def test_an_error_after_connecting_still_closes_the_connection(
    opened: Callable[..., list[str]],
) -> None:
    conn = FakeConn(lookup_error=libvirt_error(libvirt.VIR_ERR_RPC, "Cannot recv data"))
    opened(conn)
    with pytest.raises(ProbeConnectionError, match="Cannot recv data"):
        LibvirtHypervisorProbe().domain_state(HOST, "vm-1", timeout=5.0)
    assert conn.closed == 1


def test_a_bug_in_libvirt_bindings_is_not_disguised_as_a_probe_error(
    opened: Callable[..., list[str]],
) -> None:
    opened(RuntimeError("bug"))
    with pytest.raises(RuntimeError, match="bug"):
        LibvirtHypervisorProbe().probe_host(HOST, timeout=5.0)


def test_passwords_never_reach_messages_or_logs(
    opened: Callable[..., list[str]], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="cloudha.transport.libvirt")
    template = "qemu+ssh://root:hunter2@{ip}/system?password=s3cret&no_tty=1"
    opened(libvirt_error(libvirt.VIR_ERR_AUTH_FAILED, "bad login root:hunter2 with s3cret"))
    with pytest.raises(ProbeAuthError) as info:
        LibvirtHypervisorProbe(template).probe_host(HOST, timeout=5.0)
    text = str(info.value)
    assert "root:***@192.0.2.10" in text
    assert "hunter2" not in text
    assert "s3cret" not in text
    conn = FakeConn(keepalive_error=True, close_error=True)
    opened(conn)
    LibvirtHypervisorProbe(template).probe_host(HOST, timeout=5.0)
    assert caplog.records, "keepalive and close failures are logged"
    assert "hunter2" not in caplog.text
    assert "s3cret" not in caplog.text


# -- timeouts --------------------------------------------------------------------------


@pytest.mark.parametrize("call", ["probe_host", "domain_state"])
def test_a_hung_open_times_out_and_the_worker_closes_its_connection_later(
    monkeypatch: pytest.MonkeyPatch,
    gate: threading.Event,
    caplog: pytest.LogCaptureFixture,
    call: str,
) -> None:
    conn = FakeConn({"vm-1": FakeDomain(libvirt.VIR_DOMAIN_RUNNING)})

    def hung_open(uri: str) -> FakeConn:
        gate.wait(30.0)
        return conn

    monkeypatch.setattr(libvirt, "open", hung_open)
    probe = LibvirtHypervisorProbe("qemu+ssh://root:hunter2@{ip}/system")
    started = time.monotonic()
    run: Callable[[], object] = (
        (lambda: probe.probe_host(HOST, timeout=0.3))
        if call == "probe_host"
        else (lambda: probe.domain_state(HOST, "vm-1", timeout=0.3))
    )
    with pytest.raises(ProbeTimeout) as info:
        run()
    elapsed = time.monotonic() - started
    # Bounded by the timeout, not by the 30 s hang; the slack absorbs a loaded CI machine.
    assert 0.3 <= elapsed < 0.3 + 1.0
    assert info.value.host_id == "h-1"
    assert "h-1" in str(info.value)
    assert "qemu+ssh://root:***@192.0.2.10/system" in str(info.value)
    assert "hunter2" not in str(info.value)
    assert probe.lingering == 1

    gate.set()
    assert wait_until(lambda: probe.lingering == 0)
    assert conn.closed == 1
    assert "hunter2" not in caplog.text


def test_a_timeout_is_a_timeout_error_for_generic_callers() -> None:
    assert issubclass(ProbeTimeout, TimeoutError)
    assert not issubclass(ProbeTimeout, ProbeConnectionError)


def test_close_is_idempotent_and_the_probe_stays_usable() -> None:
    with LibvirtHypervisorProbe("test:///default") as probe:
        probe.close()
    probe.close()
    assert probe.probe_host(HOST, timeout=5.0).running_domains == 1


# -- destroy_domain (HypervisorControl) --------------------------------------------------


class DestroyableDomain(FakeDomain):
    """A fake domain that can be destroyed; records the calls made on it."""

    def __init__(
        self,
        state: int,
        *,
        destroy_error: BaseException | None = None,
        transient: bool = False,
    ) -> None:
        super().__init__(state)
        self.current = state
        self.destroy_error = destroy_error
        self.transient = transient
        self.calls: list[str] = []

    def isActive(self) -> int:
        self.calls.append("isActive")
        return int(self.current not in (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_CRASHED))

    def destroy(self) -> int:
        self.calls.append("destroy")
        if self.destroy_error is not None:
            raise self.destroy_error
        self.current = libvirt.VIR_DOMAIN_SHUTOFF
        return 0

    def state(self) -> list[int]:
        self.calls.append("state")
        if self.transient and self.current == libvirt.VIR_DOMAIN_SHUTOFF:
            raise libvirt_error(libvirt.VIR_ERR_NO_DOMAIN, "Domain not found")
        return [self.current, 0]


def test_the_probe_implements_the_control_port() -> None:
    assert isinstance(LibvirtHypervisorProbe(), HypervisorControl)


def test_destroy_domain_against_the_in_process_test_driver() -> None:
    probe = LibvirtHypervisorProbe("test:///default")
    holder = libvirt.open("test:///default")  # keeps the shared default state alive
    try:
        assert probe.destroy_domain(HOST, "test", timeout=5.0) is DomainState.SHUTOFF
        assert not holder.lookupByName("test").isActive()
        assert probe.domain_state(HOST, "test", timeout=5.0) is DomainState.SHUTOFF
        # Already shut off: left alone, state returned.
        assert probe.destroy_domain(HOST, "test", timeout=5.0) is DomainState.SHUTOFF
        assert probe.destroy_domain(HOST, "no-such-vm", timeout=5.0) is DomainState.MISSING
        assert "test" in holder.listDefinedDomains()  # stopped, not undefined
    finally:
        test = holder.lookupByName("test")
        if not test.isActive():
            test.create()
        del test
        holder.close()


def test_a_destroyed_transient_domain_reads_back_missing_from_the_test_driver() -> None:
    probe = LibvirtHypervisorProbe("test:///default")
    holder = libvirt.open("test:///default")
    try:
        xml = holder.lookupByName("test").XMLDesc()
        xml = xml.replace("<name>test</name>", "<name>transient-1</name>")
        xml = "\n".join(line for line in xml.splitlines() if "<uuid>" not in line)
        holder.createXML(xml).isActive()
        assert probe.domain_state(HOST, "transient-1", timeout=5.0) is DomainState.RUNNING
        assert probe.destroy_domain(HOST, "transient-1", timeout=5.0) is DomainState.MISSING
        assert "transient-1" not in holder.listDefinedDomains()
    finally:
        holder.close()


@pytest.mark.parametrize(
    ("state", "destroyed", "expected"),
    [
        (libvirt.VIR_DOMAIN_RUNNING, True, DomainState.SHUTOFF),
        (libvirt.VIR_DOMAIN_PAUSED, True, DomainState.SHUTOFF),
        (libvirt.VIR_DOMAIN_PMSUSPENDED, True, DomainState.SHUTOFF),
        (libvirt.VIR_DOMAIN_SHUTOFF, False, DomainState.SHUTOFF),
        (libvirt.VIR_DOMAIN_CRASHED, False, DomainState.SHUTOFF),
    ],
)
def test_destroy_domain_destroys_only_active_domains(
    opened: Callable[..., list[str]], state: int, destroyed: bool, expected: DomainState
) -> None:
    dom = DestroyableDomain(state)
    conn = FakeConn({"vm-1": dom})
    uris = opened(conn)
    assert LibvirtHypervisorProbe().destroy_domain(HOST, "vm-1", timeout=5.0) is expected
    assert ("destroy" in dom.calls) is destroyed
    assert dom.calls[-1] == "state"  # always read back
    assert uris == ["qemu+ssh://root@192.0.2.10/system"]
    assert conn.closed == 1


def test_destroy_domain_of_an_unknown_domain_is_missing(
    opened: Callable[..., list[str]],
) -> None:
    conn = FakeConn()
    opened(conn)
    assert LibvirtHypervisorProbe().destroy_domain(HOST, "vm-1", timeout=5.0) is (
        DomainState.MISSING
    )
    assert conn.closed == 1


def test_a_transient_domain_gone_after_destroy_is_missing(
    opened: Callable[..., list[str]],
) -> None:
    dom = DestroyableDomain(libvirt.VIR_DOMAIN_RUNNING, transient=True)
    opened(FakeConn({"vm-1": dom}))
    assert LibvirtHypervisorProbe().destroy_domain(HOST, "vm-1", timeout=5.0) is (
        DomainState.MISSING
    )
    assert dom.calls == ["isActive", "destroy", "state"]


def test_a_domain_that_stopped_before_the_destroy_is_read_back(
    opened: Callable[..., list[str]],
) -> None:
    invalid = libvirt_error(libvirt.VIR_ERR_OPERATION_INVALID, "domain is not running")
    dom = DestroyableDomain(libvirt.VIR_DOMAIN_RUNNING, destroy_error=invalid)
    opened(FakeConn({"vm-1": dom}))
    # The fake's state did not change: the read-back is what is returned.
    assert LibvirtHypervisorProbe().destroy_domain(HOST, "vm-1", timeout=5.0) is (
        DomainState.RUNNING
    )
    assert dom.calls == ["isActive", "destroy", "state"]


def test_a_refused_destroy_is_a_probe_error_and_closes_the_connection(
    opened: Callable[..., list[str]],
) -> None:
    denied = libvirt_error(libvirt.VIR_ERR_OPERATION_DENIED, "access denied: destroy")
    dom = DestroyableDomain(libvirt.VIR_DOMAIN_RUNNING, destroy_error=denied)
    conn = FakeConn({"vm-1": dom})
    opened(conn)
    with pytest.raises(ProbeConnectionError, match="access denied") as info:
        LibvirtHypervisorProbe().destroy_domain(HOST, "vm-1", timeout=5.0)
    assert info.value.host_id == "h-1"
    assert info.value.__cause__ is None
    assert conn.closed == 1


@pytest.mark.parametrize(
    ("code", "message", "expected"),
    [
        (libvirt.VIR_ERR_AUTH_FAILED, "authentication failed", ProbeAuthError),
        (libvirt.VIR_ERR_SYSTEM_ERROR, "unable to connect: refused", ProbeConnectionError),
        (
            libvirt.VIR_ERR_INTERNAL_ERROR,
            "internal error: connection closed due to keepalive timeout",
            ProbeTimeout,
        ),
    ],
)
def test_destroy_domain_maps_errors_like_the_other_calls(
    opened: Callable[..., list[str]],
    code: int,
    message: str,
    expected: type[ProbeError],
) -> None:
    opened(libvirt_error(code, message))
    with pytest.raises(ProbeError) as info:
        LibvirtHypervisorProbe().destroy_domain(HOST, "vm-1", timeout=5.0)
    assert type(info.value) is expected
    assert info.value.host_id == "h-1"
    assert message in str(info.value)


@pytest.mark.parametrize("timeout", [0, -1.0, float("nan"), True])
def test_destroy_domain_checks_its_arguments(timeout: Any) -> None:
    probe = LibvirtHypervisorProbe("test:///default")
    with pytest.raises(ValueError, match="timeout"):
        probe.destroy_domain(HOST, "test", timeout=timeout)
    with pytest.raises(ValueError, match="domain"):
        probe.destroy_domain(HOST, "", timeout=1.0)


def test_a_hung_destroy_times_out_and_its_worker_finishes_later(
    monkeypatch: pytest.MonkeyPatch, gate: threading.Event
) -> None:
    dom = DestroyableDomain(libvirt.VIR_DOMAIN_RUNNING)
    conn = FakeConn({"vm-1": dom})

    def hung_open(uri: str) -> FakeConn:
        gate.wait(30.0)
        return conn

    monkeypatch.setattr(libvirt, "open", hung_open)
    probe = LibvirtHypervisorProbe()
    started = time.monotonic()
    with pytest.raises(ProbeTimeout) as info:
        probe.destroy_domain(HOST, "vm-1", timeout=0.3)
    assert 0.3 <= time.monotonic() - started < 0.3 + 1.0  # the timeout, not the 30 s hang
    assert info.value.host_id == "h-1"
    assert probe.lingering == 1
    gate.set()
    assert wait_until(lambda: probe.lingering == 0)
    assert conn.closed == 1
    assert "destroy" in dom.calls  # the late worker still acted: read the state again
