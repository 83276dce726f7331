"""The escalation ladder: recover a host in Alert level by level before anything is fenced.

A host whose agent process died is alive, with its VMs running, and no
investigation can prove it Down: CloudStack leaves it in Alert for good,
with nobody restarting the agent. The ladder (CloudStack's Heat-like
escalation, docs/escalation.md) takes such a host through an ordered list of
recovery levels, one at a time, each with its own timeout:

* ``agent.restart`` (:class:`AgentRestartLevel`): ``systemctl restart
  <service>`` over SSH (the :class:`~cloudha.ports.HostShell` port, host keys
  verified). Success: the agent reconnects (the host is Up again) within
  ``cloudha.escalation.agent.restart.timeout``.
* ``power.cycle`` (:class:`PowerCycleLevel`): a BMC RESET read back On; the
  reset killed the host's VMs, so the host is declared Down with no VM
  running and VM HA restarts them at once (as Host-HA's recovery does).
* ``fence`` (:class:`FenceLevel`): the existing path, which ends the ladder:
  fence on suspicion when every witness lost the host, VM HA once an
  investigation proves it Down.

Safety outranks availability: a *disruptive* level (one that kills VMs, the
power cycle) is skipped for a host its last investigation found alive (a
power action on it is a fence of a live host) and for a host another
authority owns (Host-HA). The default levels are ``agent.restart, fence``:
restarting an agent touches no VM; the power cycle is opt-in.

:class:`EscalationLadder` is clock-driven and holds no thread: the
:class:`~cloudha.detection.AgentManager` offers it every host in Alert at its
recheck (:meth:`EscalationLadder.offer`) and tells it when a host is Up
again (:meth:`EscalationLadder.reset`). Every step is evidence of kind
``escalation``: ``host``, ``level``, ``step`` (1-based position in the
ladder), ``outcome`` (``started``, ``succeeded``, ``failed``,
``timed_out``, ``skipped``, or ``reset`` when the host came back after the
ladder had moved past its levels), ``timeout``, and the reason.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from cloudha.clock import Clock
from cloudha.errors import ConfigurationError, ProbeError
from cloudha.evidence import Recorder
from cloudha.model import Host
from cloudha.oobm.manager import OutOfBandManager
from cloudha.oobm.power import PowerOperation, PowerState
from cloudha.ports import HostShell, RecoveryLevel, RecoveryOutcome, RecoveryResult
from cloudha.settings import Settings

__all__ = [
    "AGENT_RESTART",
    "FENCE",
    "LEVEL_NAMES",
    "POWER_CYCLE",
    "AgentRestartLevel",
    "BaseRecoveryLevel",
    "EscalationLadder",
    "FenceLevel",
    "PowerCycleLevel",
]

log = logging.getLogger(__name__)

AGENT_RESTART = "agent.restart"
POWER_CYCLE = "power.cycle"
FENCE = "fence"
LEVEL_NAMES = (AGENT_RESTART, POWER_CYCLE, FENCE)
"""The built-in levels, the names ``cloudha.escalation.levels`` accepts."""

_LEVELS_KEY = "cloudha.escalation.levels"
DEFAULT_COMMAND = ("systemctl", "restart", "{service}")
"""The agent restart's argv; ``{service}`` is ``cloudha.escalation.agent.service``."""


def _first_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[0][:200] if lines else ""


def _never(host: Host) -> bool:
    return False


class BaseRecoveryLevel:
    """Base of a :class:`~cloudha.ports.RecoveryLevel`; subclass and override :meth:`attempt`.

    Contract:

    * :attr:`name` is the level's name in ``cloudha.escalation.levels``;
      :attr:`timeout` the seconds a STARTED attempt has to be confirmed
      (positive), or None for a level that ends the ladder (it is the last,
      and the ladder hands the host back to the existing path once it is
      reached).
    * :meth:`applies` says, without side effects, whether the level can act
      on the host: None, or why not (a port is missing, the host has no BMC).
      The ladder skips a level that does not apply, with that reason.
    * :meth:`attempt` holds **every side effect** of the level, in that one
      method (so that a mode that records instead of acting has one place
      to intercept). It returns STARTED (it acted; success is confirmed
      when the host is Up again, which the agent manager reports through
      :meth:`EscalationLadder.reset`, within :attr:`timeout`), SUCCEEDED
      (the level settled the host itself, e.g. declared it Down after a
      confirmed reset) or FAILED (it could not act: the next level is taken
      at once). It never raises for an unreachable host, SSH or BMC.
    * :attr:`disruptive` is True for a level that kills the host's VMs;
      the ladder never takes it for a host found alive, nor for one another
      authority (Host-HA) owns.
    * Thread-safe; called with the host's lock held, from the monitor.
    """

    name: str = "base"
    timeout: float | None = None
    disruptive: bool = False

    def applies(self, host: Host) -> str | None:
        """None: the level may act on ``host``. Default: it may."""
        return None

    def attempt(self, host: Host) -> RecoveryResult:
        """Act on ``host``. Default: FAILED (nothing to do)."""
        return RecoveryResult(RecoveryOutcome.FAILED, f"{self.name} does nothing")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, timeout={self.timeout!r})"


def _positive(key: str, value: float) -> float:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise ConfigurationError(
            f"{key} must be a positive number of seconds, got {value!r}", key=key, value=value
        )
    return float(value)


class AgentRestartLevel(BaseRecoveryLevel):
    """``agent.restart``: restart the host's agent service over SSH.

    Args:
        shell: runs the command on the host (host keys verified); None:
            the level never applies ("no SSH shell").
        service: the agent's systemd unit (``cloudha.escalation.agent.service``).
        timeout: seconds the agent has to reconnect after the restart.
        command_timeout: limit on the SSH command itself.
        command: the argv; ``{service}`` in an argument is replaced by the
            service name (default ``systemctl restart {service}``).

    Restarting an agent touches no VM: the level is not disruptive, and it
    acts on hosts Host-HA owns too (a live agent helps Host-HA's checks).
    Directly managed hosts (no agent process of their own) are skipped.
    """

    name = AGENT_RESTART
    disruptive = False

    def __init__(
        self,
        shell: HostShell | None,
        *,
        service: str,
        timeout: float,
        command_timeout: float,
        command: Sequence[str] = DEFAULT_COMMAND,
    ) -> None:
        if not isinstance(service, str) or not service.strip() or "\0" in service:
            raise ConfigurationError(
                f"agent service name must be a non-empty string, got {service!r}",
                key="cloudha.escalation.agent.service",
                value=service,
            )
        if isinstance(command, str) or not command or not all(isinstance(a, str) for a in command):
            raise ConfigurationError(
                "the agent restart command must be a non-empty sequence of strings",
                key="command",
                value=repr(command),
            )
        self.shell = shell
        self.service = service.strip()
        self.timeout = _positive("cloudha.escalation.agent.restart.timeout", timeout)
        self.command_timeout = _positive("command_timeout", command_timeout)
        self.argv = tuple(arg.replace("{service}", self.service) for arg in command)

    def applies(self, host: Host) -> str | None:
        if self.shell is None:
            return "no SSH shell to the hosts was given (the HostShell port)"
        if host.hypervisor.has_direct_agent:
            return f"{host.id} ({host.hypervisor}) is managed directly: it runs no agent"
        return None

    def attempt(self, host: Host) -> RecoveryResult:
        assert self.shell is not None
        shown = " ".join(self.argv[:3])
        try:
            result = self.shell.run(host, self.argv, timeout=self.command_timeout)
        except ProbeError as exc:
            return RecoveryResult(RecoveryOutcome.FAILED, f"{shown} over SSH failed: {exc}")
        except Exception as exc:  # a shell bug is a failed level, not a dead ladder
            log.exception("%s: the SSH shell raised", host.id)
            return RecoveryResult(
                RecoveryOutcome.FAILED, f"{shown} over SSH raised {type(exc).__name__}"
            )
        if result.exit_status != 0:
            first = _first_line(result.stderr)
            return RecoveryResult(
                RecoveryOutcome.FAILED,
                f"{shown} exited with status {result.exit_status}"
                + (f": {first}" if first else ""),
            )
        return RecoveryResult(
            RecoveryOutcome.STARTED,
            f"{shown} succeeded on {host.id}; waiting up to {self.timeout:g}s for the agent"
            " to reconnect",
        )


class PowerCycleLevel(BaseRecoveryLevel):
    """``power.cycle``: a BMC RESET, the power read back On, then the host is declared Down.

    Args:
        oobm: out-of-band management (the host's BMC).
        timeout: limit on the reset and its read-back together.
        declare_down: ``(host_id, reason)``: makes the host Down and hands its
            VMs to VM HA as killed (``AgentManager.declare_down`` with
            ``no_vm_runs=True``; the management server wires it). None: the
            level never applies.

    The reset kills every VM of the host: the level is disruptive (never
    on a host found alive, nor on one Host-HA owns). A reset refused or a
    power that does not read back On is FAILED (the next level goes on);
    a confirmed one is SUCCEEDED: the host is Down, its VMs restart
    elsewhere, and it is Up again once it booted and its agent connected.
    """

    name = POWER_CYCLE
    disruptive = True

    def __init__(
        self,
        oobm: OutOfBandManager,
        *,
        timeout: float,
        clock: Clock,
        declare_down: Callable[[str, str], bool] | None = None,
    ) -> None:
        self.oobm = oobm
        self.clock = clock
        self.limit = _positive("cloudha.escalation.power.cycle.timeout", timeout)
        self.timeout = self.limit
        self.declare_down = declare_down

    def applies(self, host: Host) -> str | None:
        if not self.oobm.driver_names:
            return "no power driver (out-of-band management) was given"
        if not self.oobm.configured(host):
            return f"{host.id} has no out-of-band management"
        if self.declare_down is None:
            return "nothing can declare the host Down after the reset"
        return None

    def attempt(self, host: Host) -> RecoveryResult:
        assert self.declare_down is not None
        limit = self.limit
        deadline = self.clock.monotonic() + limit
        try:
            reset = self.oobm.execute(host, PowerOperation.RESET, timeout=limit)
            if not reset.success:
                return RecoveryResult(
                    RecoveryOutcome.FAILED, f"the BMC refused the reset: {reset.message}"
                )
            left = max(0.001, deadline - self.clock.monotonic())
            status = self.oobm.execute(host, PowerOperation.STATUS, timeout=left)
        except (ProbeError, ConfigurationError) as exc:
            return RecoveryResult(RecoveryOutcome.FAILED, f"the power cycle failed: {exc}")
        if status.state is not PowerState.ON:
            return RecoveryResult(
                RecoveryOutcome.FAILED,
                f"reset accepted, but the power reads {status.state}",
            )
        reason = "power-cycled by the escalation ladder: its VMs died with the reset"
        if not self.declare_down(host.id, reason):
            return RecoveryResult(
                RecoveryOutcome.FAILED, "reset and read back On, but the host could not be Down"
            )
        return RecoveryResult(
            RecoveryOutcome.SUCCEEDED,
            "reset, power read back On; the host is Down and its VMs go to VM HA",
        )


class FenceLevel(BaseRecoveryLevel):
    """``fence``: the existing path, which ends the ladder.

    Once the ladder reaches it, the agent manager goes on as without a
    ladder: fence on suspicion (docs/suspicion.md) when every witness lost
    the host, VM HA (with its own fence chain) once an investigation proves
    it Down. It is always last; a ladder whose levels leave it out ends the
    same way once its levels are used up. Not disruptive for the ladder's
    safety rule: the existing path has its own proofs.
    """

    name = FENCE
    disruptive = False

    def attempt(self, host: Host) -> RecoveryResult:
        return RecoveryResult(
            RecoveryOutcome.STARTED,
            "the existing path: fence on suspicion once every witness lost the host,"
            " VM HA once it is proven Down",
        )


@attrs.define
class _HostLadder:
    """Where one host is on the ladder."""

    index: int = 0
    started_at: float | None = None
    """When the level at ``index`` started (None: no level in progress)."""
    ended_at: float | None = None
    """When the ladder reached its end (the fence level, or no level left); None: not yet."""
    attempting: bool = False
    """A level's :meth:`~cloudha.ports.RecoveryLevel.attempt` is running."""
    back: str | None = None
    """The host came back Up during the attempt (the reset's reason)."""


class EscalationLadder:
    """Runs the recovery levels for each host in Alert, in order, one at a time.

    Args:
        levels: the levels in order; names unique; a level without timeout
            (the fence) only last.
        clock: the time source of the levels' timeouts.
        recorder: where each step goes (evidence kind ``escalation``).
        repeat_after: seconds after its end (the fence level reached, or no
            level left) until a host still in Alert starts its ladder over
            (``cloudha.escalation.repeat.after``: an agent that could not be
            restarted through a cut link is restarted once the link is back);
            None: never.

    At each :meth:`offer` (a recheck of the host in Alert): a level in
    progress that has passed its timeout is abandoned (``timed_out``) and
    the next level is taken at the next recheck; a level in progress within
    its timeout holds the host. Otherwise the next level is taken: one that
    does not apply, or a disruptive one for a host found alive or owned by
    Host-HA (:attr:`stands_aside`), is ``skipped``; one that FAILED lets the
    next be taken at once. :meth:`reset` (the host is Up again) confirms a
    level in progress (``succeeded``) and starts the host's ladder over.
    The state is in memory: a management server that takes the host over
    starts its ladder from the first level.
    """

    def __init__(
        self,
        levels: Sequence[RecoveryLevel],
        *,
        clock: Clock,
        recorder: Recorder,
        repeat_after: float | None = None,
    ) -> None:
        names = [level.name for level in levels]
        for i, level in enumerate(levels):
            if names.count(level.name) > 1:
                raise ConfigurationError(
                    f"escalation level {level.name!r} is listed twice",
                    key=_LEVELS_KEY,
                    value=",".join(names),
                )
            if level.timeout is None and i != len(levels) - 1:
                raise ConfigurationError(
                    f"escalation level {level.name!r} ends the ladder: it must be the last",
                    key=_LEVELS_KEY,
                    value=",".join(names),
                )
            if level.timeout is not None:
                _positive(f"timeout of escalation level {level.name!r}", level.timeout)
        self.levels: tuple[RecoveryLevel, ...] = tuple(levels)
        self.repeat_after = (
            None
            if repeat_after is None
            else _positive("cloudha.escalation.repeat.after", repeat_after)
        )
        self.clock = clock
        self.recorder = recorder
        self.stands_aside: Callable[[Host], bool] = _never
        """True for a host another authority resets and fences (Host-HA owns it)."""
        self.shadow = False
        """Shadow mode (``cloudha.shadow``): every level but ``fence`` is recorded, not run."""
        self._hosts: dict[str, _HostLadder] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        clock: Clock,
        recorder: Recorder,
        shell: HostShell | None,
        oobm: OutOfBandManager,
        declare_down: Callable[[str, str], bool] | None = None,
        command: Sequence[str] = DEFAULT_COMMAND,
    ) -> EscalationLadder:
        """The ladder of ``cloudha.escalation.levels``; a level whose port is missing is
        built anyway and skipped, with the reason, when a host reaches it.

        The agent restart's SSH command is bounded by ``ping.interval`` (as
        every agent command). Raises :class:`ConfigurationError` naming
        ``cloudha.escalation.levels`` for an unknown level name.
        """
        levels: list[RecoveryLevel] = []
        for name in settings.cloudha_escalation_levels:
            if name == AGENT_RESTART:
                levels.append(
                    AgentRestartLevel(
                        shell,
                        service=settings.cloudha_escalation_agent_service,
                        timeout=settings.cloudha_escalation_agent_restart_timeout,
                        command_timeout=settings.ping_interval,
                        command=command,
                    )
                )
            elif name == POWER_CYCLE:
                levels.append(
                    PowerCycleLevel(
                        oobm,
                        timeout=settings.cloudha_escalation_power_cycle_timeout,
                        clock=clock,
                        declare_down=declare_down,
                    )
                )
            elif name == FENCE:
                levels.append(FenceLevel())
            else:
                raise ConfigurationError(
                    f"{_LEVELS_KEY}: unknown level {name!r} (known: {', '.join(LEVEL_NAMES)})",
                    key=_LEVELS_KEY,
                    value=name,
                )
        return cls(
            levels,
            clock=clock,
            recorder=recorder,
            repeat_after=settings.cloudha_escalation_repeat_after,
        )

    def level(self, name: str) -> RecoveryLevel | None:
        """The level called ``name``, or None."""
        return next((level for level in self.levels if level.name == name), None)

    def position(self, host_id: str) -> str | None:
        """The level ``host_id`` is at (in progress or next), or None (no ladder, or ended)."""
        with self._lock:
            state = self._hosts.get(host_id)
            if state is None or state.ended_at is not None or state.index >= len(self.levels):
                return None
            return self.levels[state.index].name

    def offer(self, host: Host, *, proven_alive: bool) -> bool:
        """``host`` is in Alert at its recheck: take its ladder one step; True: held."""
        now = self.clock.monotonic()
        with self._lock:
            state = self._hosts.setdefault(host.id, _HostLadder())
        if state.ended_at is not None:
            if self.repeat_after is None or now - state.ended_at < self.repeat_after:
                return False
            self.recorder.emit(
                "escalation",
                host=host.id,
                reason=f"{host.id} is still in Alert {now - state.ended_at:g}s after its ladder"
                " ended: the ladder starts over",
                level=None,
                step=None,
                outcome="reset",
                timeout=None,
            )
            state = _HostLadder()
            with self._lock:
                self._hosts[host.id] = state
        if state.started_at is not None:
            level = self.levels[state.index]
            assert level.timeout is not None
            elapsed = now - state.started_at
            if elapsed < level.timeout:
                return True
            self._emit(
                host.id,
                state.index,
                RecoveryOutcome.TIMED_OUT,
                f"{host.id} did not come back within {level.timeout:g}s of {level.name}"
                f" ({elapsed:g}s); the next level is taken at the next recheck",
            )
            state.started_at = None
            state.index += 1
            if state.index >= len(self.levels):
                state.ended_at = now
                return False
            return True
        while state.index < len(self.levels):
            level = self.levels[state.index]
            why_not = self._why_not(level, host, proven_alive)
            if why_not is not None:
                self._emit(host.id, state.index, RecoveryOutcome.SKIPPED, why_not)
                state.index += 1
                continue
            if self.shadow and level.name != FENCE:
                # Shadow mode: decided, recorded, not done (the fence level only hands the
                # host back to the existing path, which has its own shadow gate).
                self._emit(
                    host.id,
                    state.index,
                    RecoveryOutcome.SKIPPED,
                    f"shadow mode: would run {level.name} on {host.id}, did nothing",
                    shadow=True,
                )
                state.index += 1
                continue
            state.attempting = True
            try:
                result = self._attempt(level, host)
            finally:
                state.attempting = False
            self._emit(host.id, state.index, result.outcome, result.reason)
            if state.back is not None:
                # The host came back Up before the attempt even returned: nothing more to do.
                if result.outcome is RecoveryOutcome.STARTED:
                    self._emit(
                        host.id, state.index, RecoveryOutcome.SUCCEEDED, f"{state.back} at once"
                    )
                return True
            if level.timeout is None:
                state.ended_at = now
                return False
            if result.outcome is RecoveryOutcome.STARTED:
                state.started_at = now
                return True
            if result.outcome is RecoveryOutcome.SUCCEEDED:
                state.index += 1
                if state.index >= len(self.levels):
                    state.ended_at = now
                return True
            state.index += 1
        state.ended_at = now
        return False

    def reset(self, host_id: str, reason: str) -> None:
        """``host_id`` is back Up: a level in progress succeeded; the ladder starts over."""
        with self._lock:
            state = self._hosts.pop(host_id, None)
        if state is None:
            return
        if state.attempting:
            state.back = reason  # the offer in progress records it after the attempt
            return
        if state.started_at is not None:
            elapsed = self.clock.monotonic() - state.started_at
            self._emit(
                host_id,
                state.index,
                RecoveryOutcome.SUCCEEDED,
                f"{reason} {elapsed:g}s after {self.levels[state.index].name}",
            )
        else:
            self.recorder.emit(
                "escalation",
                host=host_id,
                reason=f"{reason}: the ladder starts over next time",
                level=None,
                step=None,
                outcome="reset",
                timeout=None,
            )

    def forget(self, host_id: str) -> None:
        """Drop ``host_id``'s ladder without evidence (it left this server)."""
        with self._lock:
            self._hosts.pop(host_id, None)

    def _why_not(self, level: RecoveryLevel, host: Host, proven_alive: bool) -> str | None:
        if level.disruptive and self.stands_aside(host):
            return f"Host-HA owns {host.id}: it alone resets and fences it"
        if level.disruptive and proven_alive:
            return (
                f"{host.id} was found alive by its last investigation: {level.name} would kill"
                " its running VMs (a fence of a live host)"
            )
        try:
            return level.applies(host)
        except Exception as exc:
            log.exception("%s: escalation level %s raised in applies()", host.id, level.name)
            return f"{level.name} could not tell whether it applies ({type(exc).__name__})"

    @staticmethod
    def _attempt(level: RecoveryLevel, host: Host) -> RecoveryResult:
        try:
            result = level.attempt(host)
        except Exception as exc:
            log.exception("%s: escalation level %s raised", host.id, level.name)
            return RecoveryResult(
                RecoveryOutcome.FAILED, f"{level.name} raised {type(exc).__name__}: {exc}"
            )
        if result.outcome not in (
            RecoveryOutcome.STARTED,
            RecoveryOutcome.SUCCEEDED,
            RecoveryOutcome.FAILED,
        ):
            return RecoveryResult(
                RecoveryOutcome.FAILED,
                f"{level.name} answered {result.outcome.value}, not started/succeeded/failed",
            )
        return result

    def _emit(
        self,
        host_id: str,
        index: int,
        outcome: RecoveryOutcome,
        reason: str,
        *,
        shadow: bool = False,
    ) -> None:
        level = self.levels[index]
        extra: dict[str, Any] = {"shadow": True} if shadow else {}
        self.recorder.emit(
            "escalation",
            host=host_id,
            reason=reason,
            level=level.name,
            step=index + 1,
            outcome=outcome.value,
            timeout=level.timeout,
            **extra,
        )
        if outcome is not RecoveryOutcome.SKIPPED:
            log.info("%s: escalation %s %s: %s", host_id, level.name, outcome.value, reason)
