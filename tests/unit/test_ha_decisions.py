"""The HA manager's decisions, driven directly: plain values in, a decision out, no I/O."""

from __future__ import annotations

import datetime as dt
import logging

import attrs
import pytest

from cloudha import EvidenceLog, Host, Status
from cloudha.clock import SystemClock
from cloudha.ha import decisions as d
from cloudha.ha.notifier import Notifier
from cloudha.ha.work import Step, Work, WorkType
from cloudha.investigators.base import Verdict
from cloudha.model import AlertType, ReasonType, Vm, VmState, VmType
from cloudha.ports import Alert
from cloudha.testing import RecordingAlertSink

NOW = 1_000.0
POLICY = d.Policy(
    restart_retry_interval=60,
    migrate_retry_interval=120,
    stop_retry_interval=30,
    investigate_retry_interval=10,
    max_retries=5,
    force_ha=False,
)
AT = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def work(**kw: object) -> Work:
    values: dict[str, object] = {
        "id": 7,
        "instance_id": "vm1",
        "type": WorkType.HA,
        "step": Step.INVESTIGATING,
        "previous_state": VmState.RUNNING,
        "vm_type": VmType.USER,
        "host_id": "h1",
        "mgmt_server_id": "ms1",
        "created": AT,
        "taken": AT,
        "time_to_try": 0.0,
        "tried": 0,
        "updated": 3,
        "reason": ReasonType.HOST_DOWN,
        "generation": 4,
        "priority": 0,
    }
    values.update(kw)
    return Work(**values)  # type: ignore[arg-type]


VM = Vm("vm1", host_id="h1", ha_enabled=True, updated=3)
HOST = Host("h1", status=Status.DOWN)


def inputs(w: Work | None = None, vm: Vm = VM, host: Host | None = HOST, **kw: object) -> d.Inputs:
    return d.Inputs(work=w or work(), vm=vm, host=host, policy=POLICY, now=NOW, **kw)  # type: ignore[arg-type]


def test_the_table_covers_every_work_type_and_a_missing_one_fails_at_import() -> None:
    assert set(d.DECISIONS) == set(WorkType)
    with pytest.raises(ImportError, match="Destroy"):
        d._check_exhaustive({t: d.decide_stop for t in WorkType if t is not WorkType.DESTROY})


# -- HA ---------------------------------------------------------------------------------


def test_ha_superseded_and_running_siblings() -> None:
    newer = work(id=9, taken=None, step=Step.SCHEDULED)
    assert d.decide_ha(inputs(others=[work(), newer])) == d.Finish("superseded by HA work 9")
    running = work(id=3, step=Step.INVESTIGATING)
    assert d.decide_ha(inputs(others=[running])) == d.Retry(
        "another HA work of this VM is running", at=NOW + 10
    )
    finished = work(id=3, step=Step.DONE)
    stop = work(id=11, type=WorkType.STOP)  # other types do not count
    assert isinstance(d.decide_ha(inputs(others=[finished, stop])), d.Restart)


@pytest.mark.parametrize(
    ("vm", "reason"),
    [
        (attrs.evolve(VM, state=VmState.ERROR), "the VM is in state Error"),
        (attrs.evolve(VM, updated=4), "the VM has been changed (Running/3 -> Running/4)"),
        (attrs.evolve(VM, host_id="h2"), "the VM is now on host h2"),
    ],
)
def test_ha_ends_when_the_vm_is_not_as_scheduled(vm: Vm, reason: str) -> None:
    assert d.decide_ha(inputs(vm=vm)) == d.Finish(reason)


def test_ha_unknown_host_is_an_error() -> None:
    assert d.decide_ha(inputs(host=None)) == d.Finish("unknown host 'h1'", Step.ERROR)


def test_ha_first_step() -> None:
    assert d.decide_ha(inputs()) == d.Restart("prove", removed=False)
    removed = attrs.evolve(HOST, status=Status.REMOVED)
    assert d.decide_ha(inputs(host=removed)) == d.Restart("stop", removed=True)
    nowhere = attrs.evolve(VM, host_id=None)
    assert d.decide_ha(inputs(vm=nowhere)) == d.Restart("stop", removed=False)
    scheduled = work(step=Step.SCHEDULED)
    assert d.decide_ha(inputs(scheduled)) == d.Restart("start", removed=False)
    no_host = work(host_id=None)
    assert d.decide_ha(inputs(no_host, vm=nowhere, host=None)) == d.Restart("stop", False)


def test_ha_a_work_caught_stopping_takes_a_stopped_vm_for_its_own_stop() -> None:
    # Its server died (or lost the work) between the stop and recording it: the
    # VM, Stopped on no host with a newer snapshot, is restarted, not left down.
    stopping = work(step=Step.STOPPING)
    stopped = attrs.evolve(VM, state=VmState.STOPPED, host_id=None, updated=4)
    assert d.decide_ha(inputs(stopping, vm=stopped)) == d.Restart("stop", removed=False)
    # The same change seen by a work that never got to stop is somebody else's.
    assert d.decide_ha(inputs(vm=stopped)) == d.Finish(
        "the VM has been changed (Running/3 -> Stopped/4)"
    )
    # The stop never happened: as when Investigating, death is proved again.
    assert d.decide_ha(inputs(stopping)) == d.Restart("prove", removed=False)
    # Any other change still ends it: the VM runs again, elsewhere or on its host.
    elsewhere = attrs.evolve(VM, host_id="h2", updated=5)
    assert d.decide_ha(inputs(stopping, vm=elsewhere)) == d.Finish(
        "the VM has been changed (Running/3 -> Running/5)"
    )
    destroyed = attrs.evolve(VM, state=VmState.DESTROYED, host_id=None, updated=4)
    assert isinstance(d.decide_ha(inputs(stopping, vm=destroyed)), d.Finish)


def test_verdicts_and_fences() -> None:
    up = attrs.evolve(HOST, status=Status.UP)
    alive = d.decide_verdict(Verdict.ALIVE, "agent", VM, up, POLICY, NOW)
    assert alive == d.Finish("the VM is alive (agent) and its host is Up")
    waiting = d.decide_verdict(Verdict.ALIVE, "agent", VM, HOST, POLICY, NOW)
    assert waiting == d.Retry("the VM is alive (agent) but host h1 is Down", at=NOW + 10)
    dead = d.decide_verdict(Verdict.DEAD, "libvirt", VM, HOST, POLICY, NOW)
    assert dead == d.Proceed("the VM is dead (libvirt)")
    assert d.decide_verdict(Verdict.UNKNOWN, None, VM, HOST, POLICY, NOW) == d.Fence()
    held = d.decide_last_look(Verdict.ALIVE, "kvm", "heartbeat fresh", HOST, POLICY, NOW)
    assert held == d.Retry(
        "not fenced: host h1 shows life since it was declared Down (kvm: heartbeat fresh)",
        at=NOW + 10,
    )
    for verdict in (Verdict.DEAD, Verdict.UNKNOWN):  # only a sign of life holds a fence
        assert d.decide_last_look(verdict, "kvm", "stale", HOST, POLICY, NOW) is None
    alert = attrs.evolve(HOST, status=Status.ALERT)  # not declared Down: not this rule's
    assert d.decide_last_look(Verdict.ALIVE, "kvm", "fresh", alert, POLICY, NOW) is None
    assert d.decide_fence(True, "ipmi off", VM, HOST, POLICY, NOW) == d.Proceed("ipmi off")
    failed = d.decide_fence(False, "no BMC", VM, HOST, POLICY, NOW)
    assert isinstance(failed, d.Retry)
    assert (failed.reason, failed.at) == ("not fenced: no BMC", NOW + 60)
    assert failed.notice is not None
    assert failed.notice.subject == "Unable to restart vm1 (vm1) which was running on host h1"
    assert failed.notice.host == HOST


def test_start_stages() -> None:
    assert d.decide_start(None, POLICY) == d.Finish("the VM no longer exists")
    plain = attrs.evolve(VM, ha_enabled=False)
    assert d.decide_start(plain, POLICY) == d.Finish("the VM is not HA-enabled: it stays stopped")
    assert d.decide_start(plain, attrs.evolve(POLICY, force_ha=True)) is None
    assert d.host_is_down(None, False)
    assert d.host_is_down(attrs.evolve(HOST, status=Status.UP), True)
    assert not d.host_is_down(attrs.evolve(HOST, status=Status.UP), False)
    assert d.start_plan(work(), True, False) == d.Finish(
        "the VM cannot run on another host (local storage)"
    )
    assert d.start_plan(work(), True, True) == d.StartPlan(True, ("h1",))
    assert d.start_plan(work(), False, False) == d.StartPlan(False, ())
    failed = d.decide_start_failed("CloudHAError: boom", VM, HOST, POLICY, NOW)
    assert (failed.reason, failed.at) == ("start failed: CloudHAError: boom", NOW + 60)
    running = attrs.evolve(VM, state=VmState.RUNNING, host_id="h2")
    ok = d.decide_started(running, "h2", VM, work(), HOST, POLICY, NOW)
    assert isinstance(ok, d.Finish)
    assert ok.reason == "started on host h2"
    assert ok.notice is not None
    assert ok.notice.body == "started on host h2 (generation 4)"
    stopped = attrs.evolve(VM, state=VmState.STOPPED)
    assert d.decide_started(stopped, "h2", VM, work(), HOST, POLICY, NOW) == d.Retry(
        "the start on host h2 did not leave the VM Running", at=NOW + 60
    )


# -- the other types ------------------------------------------------------------------------


def test_migration() -> None:
    mig = work(type=WorkType.MIGRATION)
    stopped = attrs.evolve(VM, state=VmState.STOPPED)
    assert d.decide_migration(inputs(mig, vm=stopped)) == d.Finish("the VM is stopped")
    moved = attrs.evolve(VM, host_id="h3")
    assert d.decide_migration(inputs(mig, vm=moved)) == d.Finish("the VM already runs on host h3")
    sourceless = work(type=WorkType.MIGRATION, host_id=None)
    assert d.decide_migration(inputs(sourceless, vm=moved)) == d.Finish(
        "the VM already runs on host h3"
    )
    migrating = attrs.evolve(VM, state=VmState.MIGRATING, host_id="h3")
    assert d.decide_migration(inputs(sourceless, vm=migrating)) == d.Finish(
        "a migration without a source host", Step.ERROR
    )
    assert d.decide_migration(inputs(mig)) == d.MigrateVm("h1")
    room = d.decide_no_room("full", VM, "h1", HOST, POLICY, NOW)
    assert (room.reason, room.at) == ("no room: full", NOW + 120)
    assert room.notice is not None
    assert room.notice.type is AlertType.HOST


@pytest.mark.parametrize("type", [WorkType.STOP, WorkType.CHECK_STOP, WorkType.FORCE_STOP])
def test_stops(type: WorkType) -> None:
    w = work(type=type)
    assert d.decide_stop(inputs(w)) == d.StopVm(force=type is WorkType.FORCE_STOP)
    changed = attrs.evolve(VM, updated=9)
    expected = d.StopVm(False) if type is WorkType.STOP else d.Finish("the VM has been changed")
    assert d.decide_stop(inputs(w, vm=changed)) == expected


def test_destroys() -> None:
    running = work(type=WorkType.DESTROY)
    assert d.decide_destroy(inputs(running)) == d.DestroyVm(True, True, False)
    gone = work(type=WorkType.DESTROY, previous_state=VmState.DESTROYED)
    assert d.decide_destroy(inputs(gone)) == d.Finish("the VM was already destroyed")
    proxy = attrs.evolve(VM, type=VmType.CONSOLE_PROXY)
    assert d.decide_destroy(inputs(gone, vm=proxy)) == d.DestroyVm(False, True, True)
    expunging = work(type=WorkType.DESTROY, previous_state=VmState.EXPUNGING)
    assert d.decide_destroy(inputs(expunging)) == d.DestroyVm(False, False, False)


def test_common_checks_and_intervals() -> None:
    assert d.vm_missing(work(type=WorkType.DESTROY)) == d.Finish("the VM no longer exists")
    assert d.vm_missing(work()) == d.Finish("unknown VM 'vm1'", Step.ERROR)
    reasons = frozenset({ReasonType.HOST_DOWN})
    assert d.is_cancellable(work(), reasons)
    assert not d.is_cancellable(work(step=Step.SCHEDULED), reasons)
    assert not d.is_cancellable(work(reason=ReasonType.UNKNOWN), reasons)
    assert [d.retry_interval(t, POLICY) for t in WorkType] == [120, 30, 30, 30, 30, 60]


def test_conclude() -> None:
    done = d.Finish("started", notice=d.Notice(AlertType.USERVM, "HA starting VM"))
    assert d.conclude(work(), done, acted=True, policy=POLICY) == d.Finish("started")
    error = d.conclude(work(), d.Finish("bad", Step.ERROR), acted=False, policy=POLICY)
    assert isinstance(error, d.Finish)
    assert error.notice is not None
    assert error.notice.subject == "HA work 7 for VM vm1 (HA) ended in Error"
    retry = d.Retry("later", at=NOW + 5)
    assert d.conclude(work(tried=3), retry, acted=True, policy=POLICY) == d.Reschedule(
        "later", NOW + 5, True
    )
    gave_up = d.conclude(work(tried=4), retry, acted=False, policy=POLICY)
    assert isinstance(gave_up, d.GiveUp)
    assert (gave_up.reason, gave_up.refresh) == ("gave up after 5 attempts: later", False)
    assert gave_up.notice.subject == "HA gave up on VM vm1 (HA)"
    # Waiting for room never uses the attempts up: the VM is tried again until a host has room.
    no_room = d.decide_start_failed(
        "InsufficientCapacityError: no room", VM, HOST, POLICY, NOW, waits=True
    )
    assert no_room.waits
    assert no_room.notice is not None  # every failed attempt is still alerted
    for tried in (4, 40):
        assert d.conclude(work(tried=tried), no_room, acted=True, policy=POLICY) == d.Reschedule(
            "start failed: InsufficientCapacityError: no room",
            NOW + POLICY.restart_retry_interval,
            True,
        )
    assert not d.decide_start_failed("CloudHAError: boom", VM, HOST, POLICY, NOW).waits


# -- the notifier ------------------------------------------------------------------------------


class BrokenSink:
    def send(self, alert: Alert) -> None:
        raise OSError("mail server down")

    def record(self, evidence: object) -> None:
        raise OSError("disk full")


def test_the_notifier_never_raises_and_logs_a_failing_sink(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broken = BrokenSink()
    notifier = Notifier(broken, broken, SystemClock(), "ms1")
    with caplog.at_level(logging.ERROR, logger="cloudha.ha.notifier"):
        assert not notifier.alert(AlertType.HOST, "Host is down")
        assert not notifier.work(work(), Step.DONE, "started")
        assert not notifier.notice(d.Notice(AlertType.USERVM, "HA starting VM"))
    assert [r.getMessage() for r in caplog.records] == [
        "alert sink failed on 'Host is down'",
        "evidence sink failed on ha_work 'started'",
        "alert sink failed on 'HA starting VM'",
    ]
    assert all(r.exc_info is not None for r in caplog.records)


def test_the_notifier_sends_alerts_and_evidence() -> None:
    alerts = RecordingAlertSink()
    log = EvidenceLog()
    notifier = Notifier(alerts, log, SystemClock(), "ms1")
    assert notifier.notice(d.Notice(AlertType.HOST, "subject", "body", HOST))
    assert notifier.notice(None)
    assert notifier.work(work(), Step.DONE, "started", retry_in=3)
    (alert,) = alerts.alerts
    assert (alert.type, alert.subject, alert.body, alert.host_id) == (
        AlertType.HOST,
        "subject",
        "body",
        "h1",
    )
    (record,) = log.records(kind="ha_work")
    assert (record.actor, record.vm, record.reason) == ("ms1", "vm1", "started")
    assert record.details["step"] == "Done"
    assert record.details["retry_in"] == 3
