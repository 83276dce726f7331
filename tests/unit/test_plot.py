"""The timeline picture: the model read from a simulator document, and the SVG/PNG drawn from it.

The documents here are written by hand, in the simulator's shape
(docs/simulator.md), so that each rule of the model has its own small case;
tests/simulation/test_plot_sim.py draws real runs.
"""

from __future__ import annotations

import struct
import sys
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from cloudha.errors import MissingExtraError
from cloudha.plot import (
    GROUP_ABOVE,
    Band,
    build_timeline,
    picture_format,
    plot_timeline,
)

SVG_NS = "{http://www.w3.org/2000/svg}"


def doc(
    hosts: Mapping[str, str | None],
    events: list[dict[str, Any]],
    *,
    until: float = 1000.0,
) -> dict[str, Any]:
    """A simulator document with these hosts (id: final status) and events."""
    return {
        "scenario": {
            "source": "/somewhere/else/case.toml",
            "seed": 4,
            "until": until,
            "hosts": len(hosts),
            "vms": 2,
        },
        "events": events,
        "final": {"hosts": {h: {"status": s, "power": "On"} for h, s in hosts.items()}, "vms": {}},
        "invariants": {},
        "ha_scheduled": [],
    }


def status(t: float, host: str, old: str | None, new: str) -> dict[str, Any]:
    return {"t": t, "kind": "host_status", "host": host, "from": old, "to": new}


def vm_state(t: float, vm: str, host: str | None, state: str) -> dict[str, Any]:
    return {"t": t, "kind": "vm_state", "vm": vm, "host": host, "state": state}


def fault(t: float, kind: str, target: str | None, **where: str) -> dict[str, Any]:
    return {"t": t, "kind": "fault", "fault": kind, "target": target, "status": "applied", **where}


def fence(t: float, host: str, fencer: str, outcome: str, vm: str = "vm1") -> dict[str, Any]:
    return {"t": t, "kind": "fence", "host": host, "vm": vm, "fencer": fencer, "outcome": outcome}


CRASH = doc(
    {"h1": "Up", "h2": "Down", "h3": "Up"},
    [
        fault(100.0, "host_crash", "h2", host="h2"),
        status(200.0, "h2", "Up", "Alert"),
        status(500.0, "h2", "Alert", "Down"),
        {"t": 500.0, "kind": "ha_work", "host": "h2", "vm": "vm1", "step": "Investigating"},
        fence(501.0, "h2", "LibvirtFencer", "NOT_FENCED"),
        fence(501.0, "h2", "KVMFenceBuilder", "FENCED"),
        vm_state(501.0, "vm1", "h2", "Stopped"),
        vm_state(501.0, "vm1", "h3", "Running"),
        {"t": 501.0, "kind": "ha_work", "host": "h2", "vm": "vm1", "step": "Done"},
    ],
)


# -- the model ------------------------------------------------------------------------


def test_each_host_has_a_lane_of_its_status_over_time() -> None:
    timeline = build_timeline(CRASH)
    assert [lane.key for lane in timeline.lanes] == ["h1", "h2", "h3"]
    assert timeline.lane("h2").bands == (
        Band(0.0, 200.0, "Up"),
        Band(200.0, 500.0, "Alert"),
        Band(500.0, 1000.0, "Down"),
    )
    # A host without a status change keeps its final status from 0 to the end.
    assert timeline.lane("h1").bands == (Band(0.0, 1000.0, "Up"),)
    assert timeline.title == "case.toml: 3 hosts, 2 VMs, seed 4"  # the file's name, no path
    assert timeline.quiet == 0


def test_a_host_without_a_status_before_its_first_event_has_no_band_then() -> None:
    timeline = build_timeline(doc({"h1": "Up"}, [status(50.0, "h1", None, "Up")]))
    assert timeline.lane("h1").bands == (Band(0.0, 50.0, None), Band(50.0, 1000.0, "Up"))


def test_faults_fences_and_moves() -> None:
    timeline = build_timeline(CRASH)
    (crash,) = timeline.faults
    assert (crash.t, crash.lane, crash.label, crash.gid) == (100.0, "h2", "host_crash", "fault-1")
    # The two levels of one fence are one marker: filled, since a level fenced.
    (fenced,) = timeline.fences
    assert fenced.lane == "h2"
    assert fenced.fenced
    assert fenced.count == 2
    assert fenced.label == "fence: LibvirtFencer NOT_FENCED, KVMFenceBuilder FENCED"
    (move,) = timeline.moves
    assert (move.vm, move.t, move.source, move.target, move.gid) == (
        "vm1",
        501.0,
        "h2",
        "h3",
        "move-1",
    )
    assert not move.in_place


def test_a_fence_that_failed_is_not_filled_and_fences_on_suspicion_count() -> None:
    timeline = build_timeline(
        doc(
            {"h1": "Up", "h2": "Alert"},
            [
                fence(10.0, "h2", "LibvirtFencer", "NOT_FENCED"),
                {
                    "t": 400.0,
                    "kind": "suspicion",
                    "host": "h2",
                    "qualifies": True,
                    "fencer": "PowerFencer",
                    "outcome": "FENCED",
                },
                {"t": 450.0, "kind": "suspicion", "host": "h2", "qualifies": False},
                {"t": 600.0, "kind": "host_ha_fence", "host": "h1", "fenced": False},
            ],
        )
    )
    assert [(f.lane, f.fenced, f.label) for f in timeline.fences] == [
        ("h2", False, "fence: LibvirtFencer NOT_FENCED"),
        ("h2", True, "fence: PowerFencer FENCED on suspicion"),
        ("h1", False, "fence: Host-HA NOT_FENCED"),
    ]


def test_faults_of_no_host_go_to_the_cloud_lane_and_a_vms_fault_to_its_host() -> None:
    timeline = build_timeline(
        doc(
            {"h1": "Up", "h2": "Up"},
            [
                fault(10.0, "storage_outage", "nfs1"),
                fault(20.0, "ms_crash", None),
                fault(30.0, "vm_crash", "vm7", vm="vm7"),
                vm_state(30.0, "vm7", "h2", "Stopped"),
                vm_state(40.0, "vm7", "h2", "Running"),
            ],
        )
    )
    assert [lane.key for lane in timeline.lanes] == ["cloud", "h1", "h2"]
    assert timeline.lane("cloud").bands == (Band(0.0, 1000.0, None),)
    assert [(f.lane, f.label) for f in timeline.faults] == [
        ("cloud", "storage_outage nfs1"),
        ("cloud", "ms_crash"),
        ("h2", "vm_crash vm7"),  # the VM was on h2 (its next event tells)
    ]
    # Started again where it was: a restart in place, not a move.
    (restart,) = timeline.moves
    assert restart.in_place
    assert restart.gid == "restart-1"


def test_a_move_without_an_earlier_vm_state_starts_from_the_host_of_its_ha_work() -> None:
    timeline = build_timeline(
        doc(
            {"h1": "Up", "h2": "Up"},
            [
                {"t": 5.0, "kind": "ha_work", "host": "h1", "vm": "vm1", "step": "Migrating"},
                vm_state(6.0, "vm1", "h2", "Running"),
                # The same VM moving on: from h2, where its last vm_state put it
                # (the Done of its work still names h1).
                {"t": 6.0, "kind": "ha_work", "host": "h1", "vm": "vm1", "step": "Done"},
                vm_state(90.0, "vm1", "h1", "Running"),
                # A VM started with nothing known of where it was is not a move.
                vm_state(95.0, "vm9", "h1", "Running"),
            ],
        )
    )
    assert [(m.source, m.target, m.gid) for m in timeline.moves] == [
        ("h1", "h2", "move-1"),
        ("h2", "h1", "move-2"),
    ]


def test_markers_of_one_lane_close_in_time_are_one_and_far_apart_are_two() -> None:
    # The window is until / 150: 20 s here.
    timeline = build_timeline(
        doc(
            {"h1": "Up"},
            [
                fault(100.0, "agent_stop", "h1", host="h1"),
                fault(110.0, "heartbeat_stop", "h1", host="h1"),
                fault(500.0, "agent_start", "h1", host="h1"),
                fault(500.0, "agent_start", "h1", host="h1"),
            ],
            until=3000.0,
        )
    )
    assert [(f.t, f.label, f.count) for f in timeline.faults] == [
        (100.0, "agent_stop, heartbeat_stop", 2),
        (500.0, "agent_start \N{MULTIPLICATION SIGN}2", 2),
    ]


def big_cloud(hosts: int, eventful: int) -> dict[str, Any]:
    """``hosts`` hosts, the first ``eventful`` crashing; their VMs move to quiet hosts."""
    names = {f"n{i:03d}": "Up" for i in range(hosts)}
    names["n999"] = "Disconnected"  # a quiet host of another status
    events: list[dict[str, Any]] = []
    for i in range(eventful):
        events.append(fault(10.0, "host_crash", f"n{i:03d}", host=f"n{i:03d}"))
        events.append(status(100.0 + i, f"n{i:03d}", "Up", "Down"))
        names[f"n{i:03d}"] = "Down"
        events.append(vm_state(200.0 + i, f"vm{i}", f"n{i:03d}", "Stopped"))
        events.append(vm_state(200.0 + i, f"vm{i}", f"n{hosts - 1 - i:03d}", "Running"))
    return doc(names, events)


def test_above_the_grouping_size_quiet_hosts_share_a_lane_per_status() -> None:
    timeline = build_timeline(big_cloud(100, 5))
    keys = [lane.key for lane in timeline.lanes]
    assert keys == ["n000", "n001", "n002", "n003", "n004", "quiet-Up", "quiet-Disconnected"]
    up = timeline.lane("quiet-Up")
    assert up.label == "95 hosts, Up throughout"
    assert len(up.hosts) == 95
    assert timeline.lane("quiet-Disconnected").label == "1 host, Disconnected throughout"
    assert timeline.quiet == 96
    # VMs moving to quiet hosts reach the summary lane.
    assert [m.target_lane for m in timeline.moves] == ["quiet-Up"] * 5
    assert [m.target for m in timeline.moves] == ["n099", "n098", "n097", "n096", "n095"]


def test_up_to_the_grouping_size_every_host_has_its_lane() -> None:
    timeline = build_timeline(big_cloud(GROUP_ABOVE - 1, 5))
    assert len(timeline.lanes) == GROUP_ABOVE  # n000..n058 and n999
    assert timeline.quiet == 0
    assert len(build_timeline(big_cloud(20, 2), group_above=10).lanes) == 4


def test_lane_ids_are_safe_and_unique() -> None:
    timeline = build_timeline(
        doc(
            {"host one": "Up", "host_one": "Up", "9x": "Up", "cloud": "Up"},
            [fault(1.0, "ms_crash", None)],
        )
    )
    assert [lane.key for lane in timeline.lanes] == [
        "cloud",
        "host_one",
        "host_one-2",
        "9x",
        "cloud-2",
    ]
    assert [lane.label for lane in timeline.lanes] == [
        "cloud",
        "host one",
        "host_one",
        "9x",
        "cloud",
    ]


def test_the_digest_follows_the_model() -> None:
    assert build_timeline(CRASH).digest() == build_timeline(CRASH).digest()
    later = doc({"h1": "Up"}, [fault(101.0, "host_crash", "h1", host="h1")])
    earlier = doc({"h1": "Up"}, [fault(100.0, "host_crash", "h1", host="h1")])
    assert build_timeline(later).digest() != build_timeline(earlier).digest()


def test_not_a_document() -> None:
    with pytest.raises(ValueError, match="not a simulator document"):
        build_timeline({"events": []})


@pytest.mark.parametrize(("name", "fmt"), [("a.svg", "svg"), ("b.PNG", "png")])
def test_picture_format_by_extension(name: str, fmt: str) -> None:
    assert picture_format(name) == fmt


@pytest.mark.parametrize(
    ("name", "words"),
    [("t.pdf", "extension '.pdf'"), ("timeline", "extension none"), ("t.svgz", "'.svgz'")],
)
def test_other_extensions_are_refused_naming_the_file(name: str, words: str) -> None:
    with pytest.raises(ValueError, match="unsupported picture format") as caught:
        picture_format(name)
    assert str(caught.value).startswith(f"{name}: ")
    assert words in str(caught.value)
    assert "use .svg or .png" in str(caught.value)


# -- the drawing ----------------------------------------------------------------------


def ids(svg: Path) -> list[str]:
    return [e.attrib["id"] for e in ET.parse(svg).iter() if "id" in e.attrib]


def test_the_svg_is_byte_identical_and_names_every_element(tmp_path: Path) -> None:
    first, second = tmp_path / "a.svg", tmp_path / "b.svg"
    timeline = plot_timeline(CRASH, first)
    plot_timeline(CRASH, second)
    assert first.read_bytes() == second.read_bytes()
    text = first.read_text()
    assert "<dc:date>" not in text
    assert f"cloudha timeline {timeline.digest()}" in text
    found = ids(first)
    for host in ("h1", "h2", "h3"):
        assert f"lane-{host}" in found
        assert f"label-{host}" in found
    for gid in ("fault-1", "fault-1-label", "fence-1", "fence-1-label", "move-1", "move-1-label"):
        assert gid in found
    assert "legend" in found
    # Text stays text, so the labels can be read (and searched) in the file.
    texts = ["".join(e.itertext()) for e in ET.parse(first).iter(f"{SVG_NS}text")]
    assert "host_crash" in texts
    assert "fence: LibvirtFencer NOT_FENCED, KVMFenceBuilder FENCED" in texts
    assert {"h1", "h2", "h3", "vm1", "Alert", "Down", "fenced", "VM moved"} <= set(texts)


def test_the_local_matplotlib_style_does_not_change_the_picture(tmp_path: Path) -> None:
    import matplotlib as mpl

    plain, styled = tmp_path / "plain.svg", tmp_path / "styled.svg"
    plot_timeline(CRASH, plain)
    with mpl.rc_context({"lines.linewidth": 7.0, "font.size": 20.0, "svg.hashsalt": None}):
        plot_timeline(CRASH, styled)
        assert mpl.rcParams["font.size"] == 20.0  # and the caller's settings are left alone
    assert plain.read_bytes() == styled.read_bytes()


def test_a_png_by_its_extension(tmp_path: Path) -> None:
    path = tmp_path / "t.png"
    plot_timeline(CRASH, path)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert 800 < width < 1400
    assert 100 < height < 400
    assert data[-8:-4] == b"IEND"


def test_many_lanes_shrink_and_their_labels_thin_out(tmp_path: Path) -> None:
    path = tmp_path / "big.svg"
    timeline = plot_timeline(big_cloud(300, 300), path)
    assert len(timeline.lanes) == 301  # every host changed; the one quiet host has a lane
    found = ids(path)
    lanes = [i for i in found if i.startswith("lane-")]
    labels = [i for i in found if i.startswith("label-")]
    assert len(lanes) == 301
    assert 0 < len(labels) < 301 / 2  # every k-th lane is labelled
    assert "label-n000" in labels
    # The markers and arrows stay; their labels are left out.
    assert len([i for i in found if i.startswith("fault-")]) == 300
    assert len([i for i in found if i.startswith("move-")]) == 300
    assert not [i for i in found if i.endswith("-label")]


def test_colliding_labels_take_the_other_slot_or_are_left_out(tmp_path: Path) -> None:
    path = tmp_path / "crowded.svg"
    crowded = doc(
        {"h1": "Up"},
        [fault(t, "heartbeat_stop", "h1", host="h1") for t in (100.0, 150.0, 200.0)],
        until=3600.0,
    )
    plot_timeline(crowded, path)
    found = ids(path)
    assert {"fault-1", "fault-2", "fault-3"} <= set(found)
    # Above, then below, then no room: the third marker keeps no label.
    assert [i for i in found if i.endswith("-label")] == ["fault-1-label", "fault-2-label"]


def test_without_matplotlib_the_error_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(MissingExtraError, match=r"needs matplotlib: pip install 'cloudha\[plot\]'"):
        plot_timeline(CRASH, tmp_path / "t.svg")
    assert not (tmp_path / "t.svg").exists()
    with pytest.raises(ValueError, match="unsupported picture format"):
        plot_timeline(CRASH, tmp_path / "t.gif")  # the format is checked first
