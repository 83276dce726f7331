"""Shadow mode (``cloudha.shadow``): decide and record, execute nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from cloudha import Host, Settings, Status
from cloudha.cli import main
from cloudha.cli.heartbeat import ShadowSelfFencer
from cloudha.detection.escalation import EscalationLadder, FenceLevel
from cloudha.evidence import EvidenceLog, Recorder
from cloudha.hostha.provider import ShadowHAProvider
from cloudha.model import ReasonType
from cloudha.ports import RecoveryOutcome
from cloudha.testing import FakeClock, ScriptedHAProvider, check_ha_provider
from tests.unit.test_escalation import Scripted
from tests.unit.test_server import Cloud, judging

HOST = Host(id="h1", status=Status.ALERT, cluster="c1", private_ip="10.0.0.1")


def test_a_shadow_provider_checks_but_never_resets_or_fences() -> None:
    clock = FakeClock(0.0)
    log = EvidenceLog()
    inner = ScriptedHAProvider()
    inner.recovers["h1"] = True
    inner.fences["h1"] = True
    inner.healthy["h1"] = False
    inner.proven["h1"] = True
    shadow = ShadowHAProvider(inner, Recorder(log, clock, "ms1"))
    check_ha_provider(shadow)
    assert shadow.is_healthy(HOST) is False  # checks are the provider's
    assert shadow.proves_dead(HOST) is True
    assert shadow.recover(HOST) is False
    assert shadow.fence(HOST) is False
    assert inner.count("recover") == 0
    assert inner.count("fence") == 0
    records = [r for r in log.records() if r.details.get("shadow")]
    assert [r.kind for r in records][-2:] == ["host_ha_recovery", "host_ha_fence"]
    assert "would reset h1" in records[-2].reason


def test_a_shadow_ladder_records_its_levels_and_runs_none_but_the_handover() -> None:
    clock = FakeClock(0.0)
    log = EvidenceLog()
    restart = Scripted("agent.restart", [RecoveryOutcome.STARTED])
    lad = EscalationLadder(
        [restart, FenceLevel()], clock=clock, recorder=Recorder(log, clock, "ms1")
    )
    lad.shadow = True
    assert lad.offer(HOST, proven_alive=False) is False  # on to the existing path
    assert restart.attempts == []
    first, second = log.records(kind="escalation")
    assert first.details["shadow"] is True
    assert first.details["outcome"] == "skipped"
    assert "would run agent.restart" in first.reason
    assert second.details["level"] == "fence"
    assert "shadow" not in second.details


def test_a_shadow_server_schedules_and_runs_no_ha_work() -> None:
    cloud = Cloud()
    cloud.settings = Settings.from_mapping({**cloud.settings.to_mapping(), "cloudha.shadow": True})
    server = cloud.server()
    server.recover()
    judging(server, cloud.clock)
    assert server.agents.shadow is True
    cloud.kill("h1")
    cloud.set_status("h1", Status.DOWN)
    assert server.agents.retry_hand_overs() == []
    server.agents.declare_down("h1", "test", no_vm_runs=True)
    (scheduled,) = [r for r in cloud.evidence.records(kind="ha_scheduled") if r.host == "h1"]
    assert scheduled.details["shadow"] is True
    assert "nothing was scheduled" in scheduled.reason
    assert server.store.works_for_vm("vm1") == []
    # a work scheduled by other means is not run either
    host = cloud.directory.find_host("h1")
    assert host is not None
    server.ha.schedule_restart_for_vms_on_host(host, investigate=True, reason=ReasonType.HOST_DOWN)
    assert server.work_tick(0) == server.settings.time_to_sleep
    (work,) = server.store.works_for_vm("vm1")
    assert work.mgmt_server_id is None


def test_a_shadow_writer_arms_no_watchdog_and_its_self_fence_only_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = tmp_path / "s.toml"
    settings.write_text('"cloudha.shadow" = true\n')
    args = [
        "heartbeat",
        "write",
        "--host-ip",
        "10.0.0.5",
        "--allow-unmounted",
        "--mount",
        str(tmp_path),
    ]
    result = CliRunner().invoke(
        main, [*args, "--watchdog", "/dev/watchdog", "--settings", str(settings)]
    )
    assert result.exit_code == 2
    assert "shadow mode resets nothing, so it arms no watchdog" in result.output
    with caplog.at_level("CRITICAL", logger="cloudha.heartbeat"):
        ShadowSelfFencer().self_fence("could not write pool p1")
    assert "shadow mode: would reset this host now (could not write pool p1)" in caplog.text
