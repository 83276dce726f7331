"""Isolation-aware self-fencing: the link rule, the writer plan, the driver, the probe,
and the management server's lease rule (a host heard from is not proved dead)."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from cloudha.detection.sightings import Sightings
from cloudha.errors import ConfigurationError
from cloudha.heartbeat import (
    FileIsolationProbe,
    HeartbeatTiming,
    HeartbeatWriter,
    LinkState,
    Pet,
    SelfFence,
    Sleep,
    StorageFault,
    Write,
    WriterAction,
    link_state,
    writer_plan,
)
from cloudha.heartbeat.isolation import default_gateway
from cloudha.investigators.support import StaleProof, sighting_proof
from cloudha.model import Host, Pool
from cloudha.testing import (
    FakeClock,
    FakeWatchdog,
    MemoryStorage,
    RecordingSelfFencer,
    ScriptedIsolationProbe,
    check_isolation_probe,
)

T0 = 1_700_000_000.0
TIMING = HeartbeatTiming()  # 60 s rounds, 5 tries, 10 s retry sleep, 60 s write timeout
P1 = Pool("nfs1", "/mnt/nfs1")
P2 = Pool("nfs2", "/mnt/nfs2")


# -- the rule -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("age", "answers", "expected"),
    [
        (0.0, None, LinkState.CONNECTED),
        (120.0, False, LinkState.CONNECTED),  # the window is inclusive
        (120.1, True, LinkState.PARTITIONED),
        (None, True, LinkState.PARTITIONED),
        (500.0, False, LinkState.ISOLATED),
        (None, None, LinkState.ISOLATED),  # no address: the agent's link alone decides
        (-5.0, None, LinkState.ISOLATED),  # an acknowledgement from the future proves nothing
    ],
)
def test_link_state_asks_the_agent_first_then_the_isolation_address(
    age: float | None, answers: bool | None, expected: LinkState
) -> None:
    assert link_state(age, 120.0, answers) is expected


# -- the plan ---------------------------------------------------------------------


def drive(
    answers: Sequence[bool],
    steps: int,
    link: Callable[[], LinkState] | None,
    *,
    watchdog: bool = True,
    reboot: bool = True,
    pools: Sequence[Pool] = (P1,),
) -> list[WriterAction]:
    plan = writer_plan(
        lambda: pools, TIMING, reboot_on_failure=reboot, watchdog=watchdog, link=link
    )
    pending = list(answers)
    seen: list[WriterAction] = []
    answer: bool | None = None
    for _ in range(steps):
        try:
            action = plan.send(answer)
        except StopIteration:
            break
        seen.append(action)
        answer = (pending.pop(0) if pending else False) if isinstance(action, Write) else None
    return seen


def test_a_connected_host_reports_the_storage_fault_and_renews_its_lease_on_the_agent() -> None:
    seen = drive([True] + [False] * 10, 40, lambda: LinkState.CONNECTED)
    assert seen[:3] == [Write(P1, 1), Pet(), Sleep(60.0, "round")]  # armed by a full round
    second = seen[3:]
    assert not any(isinstance(a, SelfFence) for a in seen)
    # A pet on the agent's link after every failed attempt, so a 340 s retry budget
    # never outlasts a 300 s watchdog.
    assert second[:3] == [Write(P1, 1), Pet("agent"), Sleep(10.0, "retry")]
    faults = [a for a in second if isinstance(a, StorageFault)]
    assert len(faults) >= 1
    assert faults[0].link is LinkState.CONNECTED
    assert "agent is connected" in faults[0].reason
    index = second.index(faults[0])
    # then the round ends with one more pet on the agent's link
    assert second[index + 1 : index + 3] == [Pet("agent"), Sleep(60.0, "round")]


def test_a_partitioned_host_does_not_reset_but_renews_nothing() -> None:
    seen = drive([True] + [False] * 10, 20, lambda: LinkState.PARTITIONED)
    second = seen[3:]
    assert not any(isinstance(a, SelfFence | Pet) for a in second)
    (fault,) = [a for a in second if isinstance(a, StorageFault)]
    assert fault.link is LinkState.PARTITIONED
    assert "watchdog resets the host" in fault.reason


def test_an_isolated_host_resets_itself_as_before() -> None:
    seen = drive([True] + [False] * 5, 40, lambda: LinkState.ISOLATED)
    last = seen[-1]
    assert isinstance(last, SelfFence)
    assert "isolation address is silent" in last.reason
    assert not any(isinstance(a, StorageFault) for a in seen)


def test_without_a_link_the_plan_is_cloudstacks() -> None:
    aware = drive([True] + [False] * 5, 40, None)
    assert isinstance(aware[-1], SelfFence)
    assert "isolation" not in aware[-1].reason


def test_a_watchdog_not_armed_yet_still_resets_the_host() -> None:
    seen = drive([False] * 5, 20, lambda: LinkState.CONNECTED)
    assert isinstance(seen[-1], SelfFence)
    assert not any(isinstance(a, Pet | StorageFault) for a in seen)


def test_without_a_watchdog_only_isolation_resets_the_host() -> None:
    for state, resets in (
        (LinkState.CONNECTED, False),
        (LinkState.PARTITIONED, False),
        (LinkState.ISOLATED, True),
    ):
        seen = drive([False] * 5, 20, lambda s=state: s, watchdog=False)  # type: ignore[misc]
        assert isinstance(seen[-1], SelfFence) is resets, state
        assert not any(isinstance(a, Pet) for a in seen)


def test_a_connected_host_goes_on_with_its_other_pools() -> None:
    seen = drive(
        [True, True] + [False] * 5 + [True], 30, lambda: LinkState.CONNECTED, pools=[P1, P2]
    )
    second = seen[4:]
    fault = next(a for a in second if isinstance(a, StorageFault))
    assert fault.pool == P1
    after = second[second.index(fault) + 1 :]
    assert after[0] == Write(P2, 1)


# -- the driver -------------------------------------------------------------------


class AgentPings(ScriptedIsolationProbe):
    """The agent's pings are acknowledged ``lag`` seconds before each question (None:
    never again after ``T0``); the run stops after ``questions`` questions."""

    def __init__(
        self, clock: FakeClock, stop: threading.Event, lag: float | None, questions: int
    ) -> None:
        super().__init__(acknowledged=T0, answers=True)
        self.clock = clock
        self.stop = stop
        self.lag = lag
        self.left = questions

    def acknowledged_at(self) -> float | None:
        self.left -= 1
        if self.left <= 0:
            self.stop.set()
        if self.lag is None:
            return self.acknowledged
        return self.clock.now().timestamp() - self.lag


def run_writer(
    lag: float | None, questions: int
) -> tuple[HeartbeatWriter, FakeWatchdog, list[str]]:
    clock = FakeClock(T0)
    storage = MemoryStorage(clock)
    stop = threading.Event()
    storage.on_write = lambda path, data: storage.failing_prefixes.add("/mnt/nfs1/")
    dog = FakeWatchdog(clock)
    fencer = RecordingSelfFencer()
    probe = AgentPings(clock, stop, lag, questions)
    writer = HeartbeatWriter(
        storage=storage,
        clock=clock,
        timing=TIMING,
        host_ip="10.0.0.5",
        pools=[P1],
        self_fencer=fencer,
        watchdog=dog,
        isolation=probe,
    )
    writer.run(stop)
    return writer, dog, fencer.calls


def test_a_connected_writer_rides_out_a_long_storage_outage() -> None:
    # nfs1 fails from the second round on (an hour of failing rounds); the agent's
    # pings keep being acknowledged: petted on the agent's link, no reset, faults reported.
    writer, dog, resets = run_writer(lag=30.0, questions=100)
    assert resets == []
    assert dog.calls[0] == ("arm", 300)
    keepalives = dog.calls.count(("keepalive",))
    assert keepalives >= 40
    assert not dog.overdue()
    assert writer.storage_faults >= 5
    assert writer.skipped_pets == 0


def test_a_writer_whose_agent_went_silent_stops_renewing_its_lease() -> None:
    # The agent's last acknowledged ping was at T0: pets on it are allowed only while a
    # countdown restarted then ends before T0 + the watchdog limit; then none, so the
    # watchdog resets the host in time. No self-fence: the isolation address answers.
    writer, _, resets = run_writer(lag=None, questions=60)
    assert resets == []
    assert writer.last_pet is not None
    assert writer.last_pet - T0 <= 120.0  # the agent window: the link is not counted after it
    assert writer.last_pet - T0 + 300 + 30 < TIMING.watchdog_limit
    # the run went on long past the countdown: a real watchdog would have reset the host
    assert writer.clock.monotonic() - writer.last_pet > 300 + 30


# -- the probe --------------------------------------------------------------------


def test_file_probe_reads_the_ack_files_mtime_and_pings_the_address(tmp_path: Path) -> None:
    ack = tmp_path / "ack"
    calls: list[list[str]] = []

    def run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[bytes]:
        calls.append(list(argv))
        return subprocess.CompletedProcess(argv, 0 if argv[-1] == "192.0.2.1" else 1)

    probe = FileIsolationProbe(str(ack), "192.0.2.1", run=run, ping="/bin/ping")
    check_isolation_probe(probe)
    assert probe.acknowledged_at() is None
    ack.write_text("")
    assert probe.acknowledged_at() == pytest.approx(ack.stat().st_mtime)
    assert probe.isolation_answers() is True
    assert calls[-1] == ["/bin/ping", "-c", "1", "-W", "1", "192.0.2.1"]
    silent = FileIsolationProbe(str(ack), "192.0.2.9", run=run, ping="/bin/ping")
    assert silent.isolation_answers() is False
    none = FileIsolationProbe(str(ack), "", run=run, ping=None)
    assert none.isolation_answers() is None


def test_file_probe_without_ping_names_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(ConfigurationError) as raised:
        FileIsolationProbe(str(tmp_path / "ack"), "gateway")
    assert raised.value.key == "cloudha.isolation.address"


def test_a_ping_that_times_out_is_no_answer(tmp_path: Path) -> None:
    def run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[bytes]:
        raise subprocess.TimeoutExpired(argv, 2)

    probe = FileIsolationProbe(str(tmp_path / "ack"), "192.0.2.1", run=run, ping="/bin/ping")
    assert probe.isolation_answers() is False


def test_default_gateway_reads_the_kernels_route_table(tmp_path: Path) -> None:
    table = tmp_path / "route"
    table.write_text(
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\n"
        "eth0\t0000A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\n"
        "eth0\t00000000\t0100A8C0\t0003\t0\t0\t0\t00000000\n"
    )
    assert default_gateway(str(table)) == "192.168.0.1"
    assert default_gateway(str(tmp_path / "missing")) is None


# -- the management server's lease rule ----------------------------------------------


def test_a_host_heard_from_within_the_stale_bound_is_not_proved_dead() -> None:
    clock = FakeClock(T0)
    sightings = Sightings(clock)
    host = Host("h1", watchdog=True, last_ping=T0 - 10_000)
    proof = StaleProof(True, "h1's heartbeat writer arms a watchdog")
    bound = TIMING.stale_after(1)
    # Every host counts as seen at the server's start.
    early = sighting_proof(host, proof, now=T0 + 100, bound=bound, sightings=sightings)
    assert not early.proves_death
    assert "heard from by its agent" in early.reason
    clock.advance(1000.0)
    sightings.seen("h1")
    clock.advance(bound)
    held = sighting_proof(
        host, proof, now=clock.now().timestamp(), bound=bound, sightings=sightings
    )
    assert not held.proves_death
    clock.advance(0.5)
    assert sighting_proof(
        host, proof, now=clock.now().timestamp(), bound=bound, sightings=sightings
    ).proves_death
    # a proof that proves nothing stays so
    nothing = StaleProof(False, "no watchdog")
    assert sighting_proof(host, nothing, now=T0 + 1e6, bound=bound, sightings=None) is nothing
