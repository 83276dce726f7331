"""``cloudha demo``: its timeline from evidence, its verdict, and a machine that lacks --real.

The real demo itself runs in tests/integration/test_demo_real.py.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cloudha.cli import main
from cloudha.cli.look import EXIT_USAGE
from cloudha.evidence import Evidence
from cloudha.testing.lab import demo as lab_demo
from cloudha.testing.lab import libvirtd as lab_libvirtd
from cloudha.testing.lab.demo import DemoResult, Step, _Follower

AT = dt.datetime(2026, 12, 7, tzinfo=dt.UTC)


def record(kind: str, host: str | None = "kvm2", vm: str | None = None, **details: Any) -> Evidence:
    reason = details.pop("reason", "")
    return Evidence(kind, 0.0, AT, "demo", host, vm, reason, details)


def test_the_follower_turns_the_victims_evidence_into_steps_once_each() -> None:
    steps: list[Step] = []
    follower = _Follower("kvm2", ["kvm2-web", "kvm2-db"], steps.append)
    # Nothing counts before the kill.
    follower.record(record("behind_on_ping", reason="no ping for 3.0s"))
    assert steps == []
    follower.killed_at = 0.0
    follower.record(record("behind_on_ping", host="kvm1", reason="another host"))
    follower.record(record("behind_on_ping", reason="no ping for 3.0s"))
    follower.record(record("behind_on_ping", reason="no ping for 4.0s"))
    follower.record(record("investigation", result="Alert", reason="not sure yet"))
    follower.record(
        record(
            "investigation",
            result="Down",
            decided_by="BMCInvestigator",
            findings=[
                {"source": "CheckHealth", "verdict": "UNKNOWN", "reason": "no answer"},
                {"source": "BMCInvestigator", "verdict": "DEAD", "reason": "BMC reads power Off"},
            ],
            reason="investigation found the host Down",
        )
    )
    follower.record(record("host_status", **{"from": "Up", "to": "Down", "event": "HostDown"}))
    follower.record(
        record("fence", vm="kvm2-web", outcome="FENCED", fencer="PowerFencer", reason="off")
    )
    follower.record(record("ha_work", vm="kvm2-web", step="Done", reason="started on host kvm1"))
    follower.record(record("ha_work", vm="kvm2-scratch", step="Done", reason="not HA"))
    got = [(s.step, s.vm, s.detail) for s in steps]
    assert got == [
        ("detected", None, "no ping for 3.0s"),
        ("investigated", None, "Down by BMCInvestigator: BMC reads power Off"),
        ("down", None, "Up -> Down (HostDown)"),
        ("fenced", "kvm2-web", "PowerFencer: off"),
        ("restarted", "kvm2-web", "started on host kvm1"),
    ]
    assert all(s.host == "kvm2" for s in steps)


def test_no_fence_needed_is_the_fencing_step() -> None:
    steps: list[Step] = []
    follower = _Follower("kvm2", ["kvm2-web"], steps.append)
    follower.killed_at = 0.0
    follower.record(
        record("ha_scheduled", reason="its HA VMs are scheduled; none runs: no fence needed")
    )
    assert [s.step for s in steps] == ["fenced"]
    assert "no fence needed" in steps[0].detail


def test_the_demo_succeeds_only_when_every_ha_vm_runs_elsewhere_in_time() -> None:
    result = DemoResult(victim="kvm2", hosts=["kvm1", "kvm2"], ha_vms=["a", "b"], limit=10.0)
    result.placement = {"a": "kvm1", "b": "kvm1"}
    result.recovered_in = {"a": 3.0, "b": 9.5}
    assert result.ok
    document = result.to_dict()
    assert document["ok"] is True
    assert document["vms"]["b"] == {"host": "kvm1", "recovered_in": 9.5}
    result.recovered_in["b"] = 10.5  # too late
    assert not result.ok
    result.recovered_in["b"] = 1.0
    result.placement["b"] = None  # nowhere
    assert not result.ok
    assert result.to_dict()["vms"]["b"]["host"] is None
    assert Step(-1.25, "ready", detail="3 hosts Up").to_dict() == {
        "t": -1.25,
        "step": "ready",
        "detail": "3 hosts Up",
    }


def test_without_libvirtd_real_is_one_line_saying_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(lab_libvirtd, "LIBVIRTD", tmp_path / "no-libvirtd")
    result = CliRunner().invoke(main, ["demo", "--real"])
    assert result.exit_code == EXIT_USAGE
    lines = result.stderr.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("cloudha demo: --real needs")
    assert "libvirt-daemon" in lines[0]
    assert "bash scripts/setup.sh test" in lines[0]
    assert "Traceback" not in result.output


def test_a_host_count_below_two_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 2 hosts"):
        lab_demo.run_real_demo(hosts=1, victim="kvm1")
