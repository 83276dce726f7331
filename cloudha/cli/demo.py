"""``cloudha demo [--real]``: a host failure, simulated or on real processes.

Without ``--real``: the simulated rack failure (40 of 200 hosts lose power,
on virtual time; what ``bash scripts/demo.sh`` runs), printed as
``cloudha simulate`` prints it; ``--json`` prints its document.

With ``--real``: a lab of real processes on loopback (each host a libvirtd
with the test driver, a heartbeat writer on a shared directory and a fake
BMC over IPMI), the ``cloudha run`` daemon in this process, and one host
powered off at its BMC; live progress from detection to every HA VM of the
dead host running on another host's libvirtd, then a summary. ``--json``
prints the timeline instead.

Exit status: without ``--real``, as ``cloudha simulate`` (with ``--check``,
1 when an invariant is violated). With ``--real``: 0 when every HA VM of the
dead host runs elsewhere within ``--limit`` seconds; 1 when one does not, or
when a lab component or the daemon cannot start; 2 when the machine lacks
what ``--real`` needs (one line saying what to install) or an option is wrong.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from cloudha.cli.look import EXIT_FAILED, EXIT_USAGE, console, emit_json, fail, table
from cloudha.errors import CloudHAError

__all__ = ["demo", "rack_failure_scenario"]

_SCENARIO = "rack-failure.toml"

_STAGES = (
    ("killed", "power off at the BMC"),
    ("detected", "detection"),
    ("investigated", "investigation"),
    ("down", "host Down"),
    ("fenced", "fencing"),
)


def rack_failure_scenario() -> Path | None:
    """The simulated demo's scenario: packaged with the wheel, or in a checkout's examples/."""
    import cloudha

    package = Path(cloudha.__file__).resolve().parent
    for candidate in (
        package / "scenarios" / _SCENARIO,
        package.parent / "examples" / "scenarios" / _SCENARIO,
    ):
        if candidate.is_file():
            return candidate
    return None


@click.command()
@click.option(
    "--real",
    is_flag=True,
    help="Real processes on loopback (libvirtd, heartbeat writers, fake BMCs) and the daemon.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the JSON document alone on stdout.")
@click.option(
    "--check",
    is_flag=True,
    help="Exit with status 1 when an invariant is violated (without --real).",
)
@click.option(
    "--hosts",
    type=click.IntRange(2, 8),
    default=3,
    show_default=True,
    help="Lab hosts (--real).",
)
@click.option(
    "--kill", "victim", default="kvm2", show_default=True, help="The host to kill (--real)."
)
@click.option(
    "--limit",
    type=click.FloatRange(min=1.0),
    default=45.0,
    show_default=True,
    help="Seconds the dead host's HA VMs have to run elsewhere (--real).",
)
@click.option(
    "--keep",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    metavar="DIR",
    help="Keep the lab's inventory, database and logs in DIR (--real).",
)
@click.pass_context
def demo(
    ctx: click.Context,
    real: bool,
    as_json: bool,
    check: bool,
    hosts: int,
    victim: str,
    limit: float,
    keep: Path | None,
) -> None:
    """A host failure and its recovery: simulated, or with --real on real processes."""
    if not real:
        for name, value in (("--keep", keep),):
            if value is not None:
                fail("demo", f"{name} goes with --real")
        scenario = rack_failure_scenario()
        if scenario is None:
            fail(
                "demo",
                f"the scenario {_SCENARIO} is neither packaged nor in examples/scenarios/:"
                " run it from a cloudha checkout",
            )
        from cloudha.cli import simulate

        ctx.invoke(simulate, scenario=scenario, as_json=as_json, check=check)
        return
    if check:
        fail("demo", "--check goes without --real (--real exits 1 when a VM is not recovered)")
    _real(as_json=as_json, hosts=hosts, victim=victim, limit=limit, keep=keep)


def _real(*, as_json: bool, hosts: int, victim: str, limit: float, keep: Path | None) -> None:
    names = [f"kvm{i}" for i in range(1, hosts + 1)]
    if victim not in names:
        fail("demo", f"--kill {victim}: the lab's hosts are {', '.join(names)}")
    from cloudha.testing.lab.demo import DemoUnavailableError, check_prerequisites, run_real_demo

    try:
        check_prerequisites()
    except DemoUnavailableError as exc:
        fail("demo", exc, EXIT_USAGE)
    view = _Progress(victim, limit, quiet=as_json)
    try:
        with view, _quiet_logs():
            result = run_real_demo(
                hosts=hosts, victim=victim, limit=limit, workdir=keep, on_step=view.step
            )
    except KeyboardInterrupt:
        fail("demo", "interrupted; the lab is stopped", EXIT_FAILED)
    except CloudHAError as exc:
        fail("demo", exc, EXIT_FAILED)
    if as_json:
        emit_json(result.to_dict())
    else:
        view.summary(result)
    if not result.ok:
        sys.exit(EXIT_FAILED)


@contextlib.contextmanager
def _quiet_logs() -> Iterator[None]:
    """Without ``-v``, the daemon's warnings (its alerts among them) would break up the live
    view: only errors are logged meanwhile. The timeline holds what happened."""
    root = logging.getLogger()
    if root.level > logging.WARNING or root.level < logging.WARNING:
        yield
        return
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(logging.WARNING)


class _Progress:
    """The live view: one row per stage, one per HA VM, filled in as steps come."""

    def __init__(self, victim: str, limit: float, *, quiet: bool) -> None:
        self.victim = victim
        self.limit = limit
        self.quiet = quiet
        self.console = console()
        self.stages: dict[str, tuple[float, str]] = {}
        self.vms: dict[str, dict[str, Any]] = {}
        self.live: Any = None
        self.ready = ""

    def __enter__(self) -> _Progress:
        if not self.quiet:
            from rich.live import Live

            self.console.print(
                f"[bold]cloudha demo --real[/bold]: starting a lab on loopback; {self.victim}"
                " will be powered off at its BMC once every host is Up"
            )
            self.live = Live(
                self.render(), console=self.console, refresh_per_second=8, transient=False
            )
            self.live.__enter__()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.live is not None:
            self.live.update(self.render())
            self.live.__exit__(None, None, None)
            self.console.print()

    def step(self, step: Any) -> None:
        """A :class:`~cloudha.testing.lab.demo.Step` happened."""
        if step.step == "ready":
            self.ready = step.detail
        elif step.vm is None:
            self.stages.setdefault(step.step, (step.t, step.detail))
        else:
            row = self.vms.setdefault(step.vm, {})
            row.setdefault(step.step, (step.t, step.host, step.detail))
        if self.live is not None:
            if step.step != "ready":
                where = f" {step.vm}" if step.vm else ""
                self.live.console.print(
                    f"[dim]{step.t:7.2f}s[/dim] {step.step}{where}: {step.detail}"
                )
            self.live.update(self.render())

    def render(self) -> Any:
        rows: list[list[object]] = []
        for key, label in _STAGES:
            t, detail = self.stages.get(key, (None, ""))
            rows.append([label, "done" if t is not None else "...", _t(t), _short(detail)])
        for vm, steps in sorted(self.vms.items()):
            fenced = steps.get("fenced")
            running = steps.get("running")
            if fenced is not None:
                rows.append([f"{vm} fenced", "done", _t(fenced[0]), _short(fenced[2])])
            if running is not None:
                rows.append([f"{vm} running elsewhere", "done", _t(running[0]), f"on {running[1]}"])
        title = f"{self.victim} dies: recovery as it happens" + (
            f" ({self.ready})" if self.ready else ""
        )
        return table(title, ["stage", "state", ">t after kill (s)", "detail"], rows)

    def summary(self, result: Any) -> None:
        rows = [
            [vm, self.victim, result.placement.get(vm) or "-", _t(result.recovered_in.get(vm))]
            for vm in result.ha_vms
        ]
        self.console.print(
            table("HA VMs of the dead host", ["vm", "was on", "runs on", ">after (s)"], rows)
        )
        if result.ok:
            slowest = max(result.recovered_in.values(), default=0.0)
            self.console.print(
                f"[green]OK: every HA VM of {self.victim} runs elsewhere, the last"
                f" {slowest:.1f}s after the kill (limit {self.limit:g}s);"
                f" lab started in {result.startup:.1f}s[/green]"
            )
        else:
            lost = [vm for vm in result.ha_vms if vm not in result.recovered_in]
            self.console.print(
                f"[red]FAILED: {', '.join(lost)} not running elsewhere within {self.limit:g}s[/red]"
            )


def _t(t: float | None) -> str:
    return "" if t is None else f"{t:.2f}"


def _short(text: str, width: int = 70) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"
