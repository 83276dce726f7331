"""P11: recovery time after a crash or a hang, in the simulator, beside CloudStack's path.

``python bench/recovery.py [--seeds N]`` prints one line per case; ``bench/run.py``
includes them. A case is 3 KVM hosts on one NFS pool, each with a BMC (IPMI or
Redfish), h2 failing at 100 s, run with N seeds (each shifts the ping phase).
Measured, worst over the seeds: seconds from the fault to the first HA VM of h2
running elsewhere, as a ratio to the target of the issue that set them:

* default settings: crash <= ``ping.timeout`` x 1.02 + 10 s, hang <= + 30 s;
* the fast profile (1 s pings, a 1 s heartbeat): both <= 10 s.

Beside it, in the same runs, CloudStack's path computed from its defaults:
CloudStack investigates once, at detection, and a neighbour then reads the
heartbeat older than ``kvm.heartbeat.update.frequency`` (60 s; 1 s in the fast
profile), so it declares the host Down at detection and restarts a second later.
That is the detection time measured here + 1 s (and, for a hang, a VM run twice
when the host resumes: cloudha waits for a fence or the watchdog instead).
vSphere HA documents 15 s to declare a host failed, before its restarts.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cloudha.settings import Settings
from cloudha.testing import simulate

FAULT_AT = 100.0
FAST: dict[str, Any] = {
    "ping.interval": 1,
    "kvm.heartbeat.update.frequency": 1000,
    "kvm.heartbeat.update.retry.sleep": 500,
    "heartbeat.update.timeout": 1000,
    # timeout + margin (8 s) below the stale bound less the skew (9 s), above the period (1 s)
    "cloudha.watchdog.timeout": 6,
    "cloudha.watchdog.reset.margin": 2,
    "time.to.sleep": 1,
    "investigate.retry.interval": 1,
    "restart.retry.interval": 5,
    "alert.wait": 60,
}
"""The fast profile: 1 s pings and a 1 s heartbeat (the keys' own units: ms for §6.1)."""

PROFILES: dict[str, dict[str, Any]] = {"default": {}, "fast": FAST}
VSPHERE_DETECTION = 15.0
"""vSphere HA: seconds to declare a host failed (its documentation)."""


@dataclass(frozen=True)
class RecoveryLine:
    profile: str
    fault: str
    bmc: str
    worst: float
    """Seconds from the fault to the first HA VM running elsewhere, worst seed."""
    target: float
    detection: float
    """Seconds from the fault to the first investigation, worst seed."""
    cloudstack: float
    """CloudStack's path: detection + 1 s, worst seed."""
    clean: bool
    """No invariant violated in any run."""

    @property
    def ratio(self) -> float:
        return self.worst / self.target


def target(profile: str, fault: str) -> float:
    if profile == "fast":
        return 10.0
    timeout = Settings().behind_on_ping_timeout
    return timeout * 1.02 + (10.0 if fault == "host_crash" else 30.0)


def scenario(
    profile: str, fault: str, bmc: str, seed: int, *, oobm_on: bool = True
) -> dict[str, Any]:
    until = 600.0 if profile == "fast" else 1500.0
    faults: list[dict[str, Any]] = [{"at": FAULT_AT, "kind": fault, "target": "h2"}]
    if fault == "host_hang":
        faults.append({"at": until - 100, "kind": "host_recover", "target": "h2"})
    return {
        "settings": PROFILES[profile],
        "hosts": [
            {"id": f"h{i}", "cluster": "c1", "pools": ["nfs1"], "oobm": bmc if oobm_on else "none"}
            for i in (1, 2, 3)
        ],
        "vms": [
            {"id": "vm2a", "host": "h2", "ha": True},
            {"id": "vm2b", "host": "h2", "ha": True},
            {"id": "vm1", "host": "h1", "ha": True},
        ],
        "faults": faults,
        "run": {"until": until, "seed": seed},
    }


def _times(doc: dict[str, Any]) -> tuple[float, float]:
    """(first HA VM of h2 running elsewhere, first investigation of h2), after the fault."""
    restart = min(
        float(e["t"])
        for e in doc["events"]
        if e["kind"] == "vm_state"
        and e["state"] == "Running"
        and e["vm"].startswith("vm2")
        and e["host"] != "h2"
        and e["t"] > FAULT_AT
    )
    detected = min(
        float(e["t"])
        for e in doc["events"]
        if e["kind"] == "investigation" and e["host"] == "h2" and e["t"] > FAULT_AT
    )
    return restart - FAULT_AT, detected - FAULT_AT


def measure(profile: str, fault: str, bmc: str, seeds: int) -> RecoveryLine:
    worst = detection = 0.0
    clean = True
    for seed in range(1, seeds + 1):
        doc = simulate(scenario(profile, fault, bmc, seed))
        restart, detected = _times(doc)
        worst = max(worst, restart)
        detection = max(detection, detected)
        clean = clean and not any(doc["invariants"].values())
    return RecoveryLine(
        profile, fault, bmc, worst, target(profile, fault), detection, detection + 1.0, clean
    )


def p11_lines(seeds: int) -> list[RecoveryLine]:
    return [
        measure(profile, fault, bmc, seeds)
        for profile in PROFILES
        for fault in ("host_crash", "host_hang")
        for bmc in ("ipmi", "redfish")
    ]


def no_bmc_crash(seeds: int) -> float:
    """Default settings, no BMC: the worst seconds from a crash to the first HA VM running."""
    return max(
        _times(simulate(scenario("default", "host_crash", "ipmi", seed, oobm_on=False)))[0]
        for seed in range(1, seeds + 1)
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    args = parser.parse_args(argv)
    print(f"{'case':34} {'cloudha':>8} {'target':>8} {'ratio':>6} {'CloudStack':>10} clean")
    for line in p11_lines(args.seeds):
        case = f"{line.profile} {line.fault} {line.bmc}"
        print(
            f"{case:34} {line.worst:8.1f} {line.target:8.1f} {line.ratio:6.2f}"
            f" {line.cloudstack:10.1f} {line.clean}"
        )
    print(
        f"default host_crash, no BMC (watchdog-guarded staleness): {no_bmc_crash(args.seeds):.1f} s"
    )
    print(f"vSphere HA, documented detection alone: {VSPHERE_DETECTION:g} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
