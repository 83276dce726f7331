"""The timeline picture of a simulation: one lane per host, faults, fences and VM moves.

:func:`build_timeline` reads the simulator's JSON document
(:func:`cloudha.testing.simulate`, docs/simulator.md) into a :class:`Timeline`,
a plain model of what the picture shows; it is pure and needs nothing but the
core. :func:`plot_timeline` draws that model with matplotlib (the ``plot``
extra) into an SVG or a PNG file, chosen by the file's extension::

    from cloudha.plot import plot_timeline
    from cloudha.testing import simulate

    plot_timeline(simulate("examples/scenarios/single-host-crash.toml"), "timeline.svg")

What the picture shows:

* one lane per host, coloured by its :class:`~cloudha.status.Status` over
  time (from the ``host_status`` events; before the first one, the status it
  left; without any, its final status);
* a ``cloud`` lane on top when a fault targets no host (the management
  server, a storage pool);
* each ``fault`` event as a cross on its host's lane (a VM's fault on the
  lane of the host the VM was on), labelled with the fault kind;
* each fence as a diamond on the fenced host's lane, filled when the host
  was fenced: the ``fence`` events (one per fencer that applied), the fences
  on suspicion (``suspicion`` events with an ``outcome``) and the Host-HA
  fences (``host_ha_fence``); labelled with the outcomes;
* each VM that ran again on another host as an arrow from the lane of the
  host it left to the lane of the host it runs on, at the time it ran again
  (the ``vm_state`` events: a VM's host is that of its last ``vm_state``,
  or, before any, that of its HA work); a VM started again on the same host
  is a circle.

Large clouds. Up to :data:`GROUP_ABOVE` hosts every host has its lane. Above
it, the hosts that are *quiet* (no status change, no fault, no fence) are
summarised: one lane per status they kept ("158 hosts, Up throughout"),
which the arrows of VMs moving to or from them reach. Lanes shrink to keep
the picture within :data:`MAX_LANES_HEIGHT` inches; when they are too thin
for a label each, every k-th lane is labelled, and fault, fence and VM
labels are left out, their markers staying. A label that would overlap
another on its lane takes the other side of the lane's middle, or is left
out.

Every element has an SVG id (``gid``): ``lane-<host>``, ``label-<host>``,
``fault-<n>``, ``fence-<n>``, ``move-<n>`` and ``restart-<n>``, numbered in
time order (a host id is kept as it is when it is a safe XML name). The
SVG is deterministic: the same document gives the same bytes (a fixed hash
salt, no date, matplotlib's default style whatever the local matplotlibrc,
the Agg canvas). Its metadata ``Description`` holds
:meth:`Timeline.digest`, the digest of the model drawn.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import attrs

from cloudha._extras import require
from cloudha.status import Status

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = [
    "FORMATS",
    "GROUP_ABOVE",
    "MAX_LANES_HEIGHT",
    "STATUS_COLOURS",
    "Band",
    "Lane",
    "Marker",
    "Move",
    "Timeline",
    "build_timeline",
    "picture_format",
    "plot_timeline",
]

FORMATS: Final[Mapping[str, str]] = {".svg": "svg", ".png": "png"}
"""The picture formats, by file extension."""

GROUP_ABOVE: Final = 60
"""Above this many hosts, the quiet hosts share summary lanes."""

MAX_LANES_HEIGHT: Final = 12.0
"""Inches the lanes may take together; past it, lanes shrink."""

PICTURE_VERSION: Final = 1
"""Bumped when the drawing changes, so that :meth:`Timeline.digest` changes too."""

STATUS_COLOURS: Final[Mapping[str, str]] = {
    str(Status.UP): "#43a047",
    str(Status.CONNECTING): "#81d4fa",
    str(Status.CREATING): "#b3e5fc",
    str(Status.ALERT): "#ffb300",
    str(Status.DISCONNECTED): "#90a4ae",
    str(Status.DOWN): "#e53935",
    str(Status.ERROR): "#8e24aa",
    str(Status.REBALANCING): "#26a69a",
    str(Status.REMOVED): "#424242",
    str(Status.UNKNOWN): "#e0e0e0",
}
"""The band colour of each host status (legend order)."""

_OTHER_COLOUR: Final = "#bdbdbd"
_CLOUD: Final = ""
"""Where faults that target no host go, in place of a host id (the ``cloud`` lane)."""
_FAULT_COLOUR: Final = "#212121"
_FENCE_COLOUR: Final = "#0d47a1"
_MOVE_COLOUR: Final = "#4a148c"
_LANE_LABEL_PT: Final = 9.0
"""Lanes at least this tall (points) each get a label."""
_MARKER_LABEL_PT: Final = 18.0
"""Lanes at least this tall (points) show fault and fence labels."""
_MOVE_LABELS_UP_TO: Final = 12
"""VM names are written beside at most this many moves (and above it arrows are thinner)."""
_FIGURE_WIDTH_IN: Final = 10.0
"""Width of the lanes (the time axis); labels and legend come around it."""
_AXES_WIDTH_PT: Final = _FIGURE_WIDTH_IN * 72
_LABEL_PT: Final = 7.0
"""Font size of fault, fence and VM labels."""
_LABEL_GAP_PT: Final = 4.0


@attrs.frozen
class Band:
    """A host's (or a summary lane's) status from ``start`` to ``end`` (virtual seconds)."""

    start: float
    end: float
    status: str | None
    """The status, or None while the host has none (nothing is drawn)."""


@attrs.frozen
class Lane:
    """One row of the picture."""

    key: str
    """The lane's SVG id suffix: a host id, ``cloud``, or ``quiet-<status>``."""
    label: str
    hosts: tuple[str, ...]
    """The hosts drawn on it (one, none for ``cloud``, several for a summary lane)."""
    bands: tuple[Band, ...]


@attrs.frozen
class Marker:
    """A fault or a fence, at ``t`` on lane ``lane``."""

    kind: str
    """``fault`` or ``fence``."""
    t: float
    lane: str
    label: str
    gid: str
    fenced: bool = False
    """For a fence: did one of its fencers fence the host?"""
    count: int = 1
    """How many events it stands for (events of one lane close in time are one marker)."""


@attrs.frozen
class Move:
    """A VM that ran again at ``t``: on another host (an arrow), or where it was (a circle)."""

    vm: str
    t: float
    source: str
    """The host it left."""
    target: str
    """The host it runs on."""
    source_lane: str
    target_lane: str
    gid: str

    @property
    def in_place(self) -> bool:
        """Started again on the host it was on."""
        return self.source == self.target


@attrs.frozen
class Timeline:
    """What the picture shows (:func:`build_timeline`)."""

    title: str
    until: float
    lanes: tuple[Lane, ...]
    """Top to bottom."""
    faults: tuple[Marker, ...]
    fences: tuple[Marker, ...]
    moves: tuple[Move, ...]
    quiet: int
    """Hosts summarised in the quiet lanes (0 up to :data:`GROUP_ABOVE` hosts)."""

    def lane(self, key: str) -> Lane:
        """The lane ``key``; raises KeyError."""
        for lane in self.lanes:
            if lane.key == key:
                return lane
        raise KeyError(key)

    def digest(self) -> str:
        """A SHA-256 of the model and :data:`PICTURE_VERSION` (written into the SVG)."""
        model = {"version": PICTURE_VERSION, **attrs.asdict(self)}
        text = json.dumps(model, sort_keys=True, separators=(",", ":"), allow_nan=False)
        return hashlib.sha256(text.encode()).hexdigest()


def picture_format(path: str | Path) -> str:
    """The format of a picture file from its extension (``svg`` or ``png``).

    Raises:
        ValueError: another extension; the message names the file.
    """
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        shown = repr(suffix) if suffix else "none"
        raise ValueError(
            f"{path}: unsupported picture format (extension {shown}); use .svg or .png"
        )
    return FORMATS[suffix]


# -- the model ------------------------------------------------------------------------


class _Ids:
    """Unique, XML-safe SVG ids."""

    _SAFE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")

    def __init__(self) -> None:
        self.used: set[str] = set()

    def make(self, prefix: str, name: str) -> str:
        safe = name if self._SAFE.fullmatch(name) else re.sub(r"[^A-Za-z0-9_.-]", "_", name)
        gid = f"{prefix}-{safe}"
        n = 1
        while gid in self.used:
            n += 1
            gid = f"{prefix}-{safe}-{n}"
        self.used.add(gid)
        return gid


def _host_bands(
    changes: Sequence[Mapping[str, Any]], final: str | None, until: float
) -> tuple[Band, ...]:
    """A host's bands from its ``host_status`` events (time order)."""
    if not changes:
        return (Band(0.0, until, final),)
    bands: list[Band] = []
    start, status = 0.0, _status(changes[0].get("from"))
    for change in changes:
        t = float(change["t"])
        if t > start:
            bands.append(Band(start, t, status))
            start = t
        status = _status(change.get("to"))
    bands.append(Band(start, until, status))
    return tuple(bands)


def _status(value: object) -> str | None:
    return None if value is None else str(value)


class _VmPlaces:
    """Where each VM is, followed through the events in order (one pass).

    A VM is on the host of its last ``vm_state`` event; before any, on the
    host of its last HA work (``ha_work``); before both, on the first host
    any of its events names (what a VM's fault, which names no host, needs).
    """

    def __init__(self, events: Sequence[Mapping[str, Any]]) -> None:
        self.first: dict[str, str] = {}
        for event in events:
            vm, host = event.get("vm"), event.get("host")
            if vm and host and event.get("kind") in ("vm_state", "ha_work"):
                self.first.setdefault(str(vm), str(host))
        self.state: dict[str, str] = {}
        self.work: dict[str, str] = {}

    def now(self, vm: str) -> str | None:
        """Where ``vm`` is, from the events seen so far."""
        return self.state.get(vm) or self.work.get(vm)

    def guess(self, vm: str) -> str | None:
        """Where ``vm`` is, or else where it first shows up."""
        return self.now(vm) or self.first.get(vm)

    def see(self, event: Mapping[str, Any]) -> None:
        vm, host = event.get("vm"), event.get("host")
        if not (vm and host):
            return
        if event.get("kind") == "vm_state":
            self.state[str(vm)] = str(host)
        elif event.get("kind") == "ha_work":
            self.work[str(vm)] = str(host)


def _fence_events(events: Sequence[Mapping[str, Any]]) -> Iterable[tuple[Mapping[str, Any], str]]:
    """Each fence event with its label part."""
    for event in events:
        kind = event.get("kind")
        if not event.get("host"):
            continue
        if kind == "fence":
            yield event, f"{event.get('fencer')} {event.get('outcome')}"
        elif kind == "suspicion" and event.get("outcome") is not None:
            yield event, f"{event.get('fencer')} {event.get('outcome')} on suspicion"
        elif kind == "host_ha_fence":
            yield event, "Host-HA " + ("FENCED" if event.get("fenced") else "NOT_FENCED")


def _fenced(event: Mapping[str, Any]) -> bool:
    if event.get("kind") == "host_ha_fence":
        return bool(event.get("fenced"))
    return event.get("outcome") == "FENCED"


def _clusters(
    items: Sequence[tuple[float, str, str, bool]], window: float
) -> list[list[tuple[float, str, str, bool]]]:
    """(t, lane, label, fenced) items per lane, each group spanning gaps up to ``window``."""
    open_: dict[str, list[tuple[float, str, str, bool]]] = {}
    done: list[list[tuple[float, str, str, bool]]] = []
    for item in items:
        current = open_.get(item[1])
        if current is not None and item[0] - current[-1][0] <= window:
            current.append(item)
            continue
        current = [item]
        open_[item[1]] = current
        done.append(current)
    return done


def _summary(labels: Sequence[str]) -> str:
    """``a, b (times 2)`` from ``[a, b, b]``, written with a multiplication sign."""
    counts: dict[str, int] = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    return ", ".join(
        label if n == 1 else f"{label} \N{MULTIPLICATION SIGN}{n}" for label, n in counts.items()
    )


def build_timeline(document: Mapping[str, Any], *, group_above: int = GROUP_ABOVE) -> Timeline:
    """The model of the timeline picture of a simulator document (see the module).

    Args:
        document: :func:`cloudha.testing.simulate`'s result, or its JSON read back.
        group_above: above this many hosts, quiet hosts share summary lanes.

    Raises:
        ValueError: the document lacks ``scenario``, ``events`` or ``final.hosts``.
    """
    try:
        meta = document["scenario"]
        events: Sequence[Mapping[str, Any]] = document["events"]
        final_hosts: Mapping[str, Mapping[str, Any]] = document["final"]["hosts"]
        until = float(meta["until"])
    except (KeyError, TypeError) as exc:
        raise ValueError(f"not a simulator document: no {exc}") from exc
    hosts = list(final_hosts)
    host_set = set(hosts)
    changes: dict[str, list[Mapping[str, Any]]] = {}
    for event in events:
        if event.get("kind") == "host_status" and event.get("host") in host_set:
            changes.setdefault(str(event["host"]), []).append(event)
    bands = {
        host: _host_bands(changes.get(host, ()), _status(final_hosts[host].get("status")), until)
        for host in hosts
    }

    # Where each fault, fence and move lands (a host, or the cloud lane).
    fault_items: list[tuple[float, str, str, bool]] = []
    moves_raw: list[tuple[str, float, str, str]] = []
    places = _VmPlaces(events)
    for event in events:
        kind = event.get("kind")
        if kind == "fault":
            target, host = event.get("target"), event.get("host")
            if host is None and event.get("vm"):
                host = places.guess(str(event["vm"]))
            label = str(event.get("fault"))
            if target and str(target) != host:
                label += f" {target}"
            if event.get("status") not in (None, "applied"):
                label += f" ({event.get('status')})"
            where = str(host) if host in host_set else _CLOUD
            fault_items.append((float(event["t"]), where, label, False))
        elif kind == "vm_state" and event.get("state") == "Running" and event.get("host"):
            vm, target = str(event.get("vm")), str(event["host"])
            source = places.now(vm)
            if source is not None and source in host_set and target in host_set:
                moves_raw.append((vm, float(event["t"]), source, target))
        places.see(event)
    fence_items = [
        (float(event["t"]), str(event["host"]), label, _fenced(event))
        for event, label in _fence_events(events)
        if event["host"] in host_set
    ]

    # The lanes.
    eventful = {where for _, where, _, _ in fault_items + fence_items} | set(changes)
    lane_of: dict[str, str] = {}
    lanes: list[Lane] = []
    ids = _Ids()
    if _CLOUD in eventful:
        key = ids.make("lane", "cloud").removeprefix("lane-")
        lanes.append(Lane(key, "cloud", (), (Band(0.0, until, None),)))
        lane_of[_CLOUD] = key
    grouping = len(hosts) > group_above
    quiet: dict[str | None, list[str]] = {}
    for host in hosts:
        if grouping and host not in eventful:
            quiet.setdefault(bands[host][0].status, []).append(host)
            continue
        key = ids.make("lane", host).removeprefix("lane-")
        lane_of[host] = key
        lanes.append(Lane(key, host, (host,), bands[host]))
    for status, members in quiet.items():
        key = ids.make("lane", f"quiet-{status or 'none'}").removeprefix("lane-")
        what = f"{status} throughout" if status else "no status"
        count = f"{len(members)} host" + ("" if len(members) == 1 else "s")
        lanes.append(Lane(key, f"{count}, {what}", tuple(members), bands[members[0]]))
        for host in members:
            lane_of[host] = key

    window = until / 150 if until > 0 else 0.0
    faults = tuple(
        Marker(
            "fault",
            group[0][0],
            lane_of[group[0][1]],
            _summary([label for _, _, label, _ in group]),
            f"fault-{n}",
            count=len(group),
        )
        for n, group in enumerate(_clusters(fault_items, window), start=1)
    )
    fences = tuple(
        Marker(
            "fence",
            group[0][0],
            lane_of[group[0][1]],
            "fence: " + _summary([label for _, _, label, _ in group]),
            f"fence-{n}",
            fenced=any(fenced for _, _, _, fenced in group),
            count=len(group),
        )
        for n, group in enumerate(_clusters(fence_items, window), start=1)
    )
    moves: list[Move] = []
    counters = {"move": 0, "restart": 0}
    for vm, t, source, target in moves_raw:
        kind = "restart" if source == target else "move"
        counters[kind] += 1
        moves.append(
            Move(
                vm, t, source, target, lane_of[source], lane_of[target], f"{kind}-{counters[kind]}"
            )
        )
    title = (
        f"{Path(str(meta.get('source', 'scenario'))).name}: {meta.get('hosts', len(hosts))} hosts,"
        f" {meta.get('vms', '?')} VMs, seed {meta.get('seed', '?')}"
    )
    return Timeline(
        title=title,
        until=until,
        lanes=tuple(lanes),
        faults=faults,
        fences=fences,
        moves=tuple(moves),
        quiet=sum(len(m) for m in quiet.values()),
    )


# -- the drawing ----------------------------------------------------------------------

_RC: Final[Mapping[str, Any]] = {
    "svg.hashsalt": "cloudha-timeline",
    "svg.fonttype": "none",  # text stays text: searchable, and small
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans"],
    "path.simplify": True,
}


def plot_timeline(
    document: Mapping[str, Any], path: str | Path, *, group_above: int = GROUP_ABOVE
) -> Timeline:
    """Draw the timeline picture of a simulator document into ``path`` (.svg or .png).

    Returns the :class:`Timeline` drawn.

    Raises:
        ValueError: an unsupported extension (:func:`picture_format`), or not a
            simulator document.
        MissingExtraError: matplotlib is not installed (``pip install 'cloudha[plot]'``).
        OSError: the file cannot be written.
    """
    fmt = picture_format(path)
    require("matplotlib", "plot", "the timeline picture")
    timeline = build_timeline(document, group_above=group_above)
    import matplotlib as mpl
    import matplotlib.style
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rc: Any = dict(_RC)  # typed by key in newer matplotlib, str in older
    with matplotlib.style.context("default"), mpl.rc_context(rc):
        n = max(1, len(timeline.lanes))
        lane_in = min(0.42, MAX_LANES_HEIGHT / n)
        # The axes fill the figure, one lane_in per lane; the tight bounding box
        # takes in the title, the labels and the legend around them.
        figure = Figure(figsize=(_FIGURE_WIDTH_IN, lane_in * n), dpi=100)
        FigureCanvasAgg(figure)
        axes = figure.add_axes((0.0, 0.0, 1.0, 1.0))
        _draw(axes, timeline, lane_pt=lane_in * 72)
        metadata: dict[str, str | None]
        if fmt == "svg":
            metadata = {"Date": None, "Description": f"cloudha timeline {timeline.digest()}"}
        else:
            metadata = {}
        figure.savefig(path, format=fmt, metadata=metadata, bbox_inches="tight", dpi=100)
    return timeline


def _draw(axes: Axes, timeline: Timeline, *, lane_pt: float) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.patches import FancyArrowPatch, Patch

    n = len(timeline.lanes)
    y_of = {lane.key: float(n - 1 - i) for i, lane in enumerate(timeline.lanes)}
    half = 0.36
    seen: list[str] = []
    for lane in timeline.lanes:
        drawn = [b for b in lane.bands if b.status is not None and b.end > b.start]
        for band in drawn:
            if band.status is not None and band.status not in seen:
                seen.append(band.status)
        axes.broken_barh(
            [(b.start, b.end - b.start) for b in drawn],
            (y_of[lane.key] - half, 2 * half),
            facecolors=[STATUS_COLOURS.get(str(b.status), _OTHER_COLOUR) for b in drawn],
            edgecolor="none",
            gid=f"lane-{lane.key}",
        )
    axes.set_xlim(0.0, timeline.until)
    axes.set_ylim(-0.6, n - 0.4)
    step = 1 if lane_pt >= _LANE_LABEL_PT else math.ceil(_LANE_LABEL_PT / lane_pt)
    labelled = [lane for i, lane in enumerate(timeline.lanes) if i % step == 0]
    axes.set_yticks(
        [y_of[lane.key] for lane in labelled],
        labels=[lane.label for lane in labelled],
        fontsize=max(5.0, min(9.0, lane_pt * 0.55)),
    )
    for text, lane in zip(axes.get_yticklabels(), labelled, strict=True):
        text.set_gid(f"label-{lane.key}")
    axes.tick_params(axis="y", length=0)
    axes.set_xlabel("virtual time (s)")
    axes.grid(axis="x", color="#cccccc", linewidth=0.5)
    axes.set_axisbelow(True)
    for side in ("top", "right", "left"):
        axes.spines[side].set_visible(False)

    marker_labels = lane_pt >= _MARKER_LABEL_PT
    size = max(3.0, min(8.0, lane_pt * 0.4))
    labels: list[_Label] = []
    for fault in timeline.faults:
        y = y_of[fault.lane]
        axes.plot(
            [fault.t],
            [y],
            marker="X",
            markersize=size,
            color=_FAULT_COLOUR,
            linestyle="none",
            gid=fault.gid,
            zorder=4,
        )
        labels.append(_Label(fault.lane, fault.t, fault.label, 0, _FAULT_COLOUR, fault.gid))
    for fence in timeline.fences:
        y = y_of[fence.lane]
        axes.plot(
            [fence.t],
            [y],
            marker="D",
            markersize=size * 0.9,
            color=_FENCE_COLOUR,
            markerfacecolor=_FENCE_COLOUR if fence.fenced else "white",
            linestyle="none",
            gid=fence.gid,
            zorder=4,
        )
        labels.append(_Label(fence.lane, fence.t, fence.label, 1, _FENCE_COLOUR, fence.gid))
    arrows = [m for m in timeline.moves if not m.in_place]
    crowded = len(arrows) > _MOVE_LABELS_UP_TO
    for move in timeline.moves:
        y0, y1 = y_of[move.source_lane], y_of[move.target_lane]
        if move.in_place or y0 == y1:
            axes.plot(
                [move.t],
                [y1],
                marker="o",
                markersize=size * 0.8,
                color=_MOVE_COLOUR,
                markerfacecolor="none",
                linestyle="none",
                gid=move.gid,
                zorder=4,
            )
        else:
            axes.add_patch(
                FancyArrowPatch(
                    (move.t, y0),
                    (move.t, y1),
                    arrowstyle="-|>",
                    mutation_scale=5 if crowded else 8,
                    color=_MOVE_COLOUR,
                    linewidth=0.4 if crowded else 0.9,
                    alpha=0.35 if crowded else 0.8,
                    shrinkA=0,
                    shrinkB=0,
                    gid=move.gid,
                    zorder=3,
                )
            )
        if len(timeline.moves) <= _MOVE_LABELS_UP_TO:
            labels.append(_Label(move.target_lane, move.t, move.vm, 1, _MOVE_COLOUR, move.gid))
    if marker_labels:
        for label, slot, left in _layout(labels, timeline.until):
            axes.annotate(
                label.text,
                (label.t, y_of[label.lane]),
                xytext=(-_LABEL_GAP_PT if left else _LABEL_GAP_PT, 3 if slot == 0 else -3),
                textcoords="offset points",
                fontsize=_LABEL_PT,
                ha="right" if left else "left",
                va="bottom" if slot == 0 else "top",
                color=label.colour,
                bbox={"boxstyle": "square,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.75},
                gid=f"{label.gid}-label",
                zorder=5,
            )

    handles: list[Any] = [
        Patch(facecolor=STATUS_COLOURS.get(s, _OTHER_COLOUR), label=s)
        for s in sorted(seen, key=_legend_order)
    ]
    if timeline.faults:
        handles.append(_handle(Line2D, "fault", "X", _FAULT_COLOUR, filled=True))
    if any(f.fenced for f in timeline.fences):
        handles.append(_handle(Line2D, "fenced", "D", _FENCE_COLOUR, filled=True))
    if any(not f.fenced for f in timeline.fences):
        handles.append(_handle(Line2D, "fence failed", "D", _FENCE_COLOUR, filled=False))
    if arrows:
        handles.append(
            Line2D([], [], color=_MOVE_COLOUR, marker="^", markersize=5, label="VM moved")
        )
    if len(arrows) < len(timeline.moves):
        handles.append(_handle(Line2D, "VM restarted in place", "o", _MOVE_COLOUR, filled=False))
    legend = axes.legend(
        handles=handles,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        borderaxespad=0.0,
        fontsize=8,
        frameon=False,
    )
    legend.set_gid("legend")
    title = timeline.title
    if timeline.quiet:
        title += (
            f"\n{timeline.quiet} hosts without a status change, fault or fence"
            " share the summary lanes at the bottom"
        )
    axes.set_title(title, loc="left", fontsize=10)


@attrs.frozen
class _Label:
    """The text beside a marker, wanting slot ``slot`` (0 above the lane's middle, 1 below)."""

    lane: str
    t: float
    text: str
    slot: int
    colour: str
    gid: str


def _layout(labels: Sequence[_Label], until: float) -> list[tuple[_Label, int, bool]]:
    """Where each label goes: (label, slot, left of its marker), leaving out those that collide.

    A label takes its slot if free over its width, else the other slot; with
    both taken it is left out (its marker stays). Widths are estimated from
    the character count (0.6 em a character), which is what matters here:
    the same input, the same layout.
    """
    per_second = _AXES_WIDTH_PT / until if until > 0 else 1.0
    taken: dict[tuple[str, int], list[tuple[float, float]]] = {}
    placed: list[tuple[_Label, int, bool]] = []
    for label in sorted(labels, key=lambda lb: (lb.t, lb.slot)):
        width = (_LABEL_GAP_PT + 0.6 * _LABEL_PT * len(label.text)) / per_second
        left = label.t + width > until
        span = (label.t - width, label.t) if left else (label.t, label.t + width)
        for slot in (label.slot, 1 - label.slot):
            spans = taken.setdefault((label.lane, slot), [])
            if all(span[1] <= a or span[0] >= b for a, b in spans):
                spans.append(span)
                placed.append((label, slot, left))
                break
    return placed


def _legend_order(status: str) -> int:
    order = list(STATUS_COLOURS)
    return order.index(status) if status in order else len(order)


def _handle(line: Any, label: str, marker: str, colour: str, *, filled: bool) -> Any:
    return line(
        [],
        [],
        color=colour,
        marker=marker,
        linestyle="none",
        markersize=6,
        markerfacecolor=colour if filled else "white",
        label=label,
    )
