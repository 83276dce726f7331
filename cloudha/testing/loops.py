"""Run a :class:`~cloudha.ManagementServer`'s loops on virtual time, without threads.

:meth:`ManagementServer.start <cloudha.ManagementServer.start>` runs each of
:meth:`~cloudha.ManagementServer.loops` in its own thread on the wall clock.
A test (or an example) wants the same loops on a
:class:`~cloudha.testing.FakeClock`, deterministic and fast: :class:`LoopRunner`
does that, as the simulator does::

    server.recover(connected=["h1", "h2"])   # what start() does first
    runner = LoopRunner(server, clock, each_step=hosts_ping)
    runner.run_until(lambda: vm_running_elsewhere(), within=600)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from cloudha.errors import ConfigurationError
from cloudha.testing.clock import FakeClock

if TYPE_CHECKING:
    from cloudha.server import ManagementServer

__all__ = ["LoopRunner"]


class LoopRunner:
    """Ticks every due loop of ``server`` once per step, then advances ``clock`` by ``step``.

    A loop's tick returns the seconds until its next round; the runner keeps
    each loop's due time and ticks it again when the clock reaches it. New HA
    work makes the worker loops due at once (the runner becomes the server's
    ``on_work_added``), as the worker threads are woken in production.

    Args:
        server: the server whose :meth:`~cloudha.ManagementServer.loops` to run
            (recover it first, as ``start()`` does).
        clock: the fake clock the server was built with.
        step: virtual seconds per step (> 0).
        each_step: called at the start of every step with the virtual time
            (``clock.monotonic()``): the test's world does its part there (agents
            ping, heartbeat writers stamp the pools).
    """

    def __init__(
        self,
        server: ManagementServer,
        clock: FakeClock,
        *,
        step: float = 1.0,
        each_step: Callable[[float], None] | None = None,
    ) -> None:
        if not (isinstance(step, int | float) and 0 < step < float("inf")):
            raise ConfigurationError(f"step must be a positive number, got {step!r}", key="step")
        self.server = server
        self.clock = clock
        self.step_seconds = float(step)
        self.each_step = each_step
        self.loops = server.loops()
        self.due = {loop.name: clock.monotonic() + loop.first_delay for loop in self.loops}
        server.on_work_added = self.wake

    def wake(self) -> None:
        """Make the loops that new work wakes (the HA workers) due now."""
        now = self.clock.monotonic()
        self.due.update({loop.name: now for loop in self.loops if loop.wake_on_work})

    def step(self) -> None:
        """One step: the world's part, every due loop once, then ``step`` seconds pass."""
        if self.each_step is not None:
            self.each_step(self.clock.monotonic())
        for loop in self.loops:
            if self.due[loop.name] <= self.clock.monotonic():
                self.due[loop.name] = self.clock.monotonic() + loop.tick()
        self.clock.advance(self.step_seconds)

    def run_for(self, seconds: float) -> None:
        """Run steps until ``seconds`` of virtual time have passed."""
        end = self.clock.monotonic() + seconds
        while self.clock.monotonic() < end:
            self.step()

    def run_until(self, done: Callable[[], bool], *, within: float) -> bool:
        """Run steps until ``done()`` is true (checked after each step) or ``within`` virtual
        seconds pass; whether ``done()`` became true."""
        end = self.clock.monotonic() + within
        while self.clock.monotonic() < end:
            self.step()
            if done():
                return True
        return done()
