"""The phi accrual failure detector (Hayashibara et al., SRDS 2004), pure.

A fixed timeout says "dead or alive" at one instant for every host alike. The
phi accrual detector instead turns the time since a host's last ping into a
suspicion level, from the host's own recent inter-arrival times:

    phi(t) = -log10(P(the next ping comes later than t))

so phi = 1 means about a 10 % chance that declaring the host behind now is a
mistake, phi = 2 a 1 % chance, phi = 8 one in 10^8 (under the model). The
arrival times are modelled as a normal distribution of mean
``mean + acceptable_pause`` and standard deviation
``max(std_deviation, min_std_deviation)`` over a bounded window of the last
``window`` intervals, as Akka's ``PhiAccrualFailureDetector`` does, with its
logistic approximation of the normal CDF::

    y = (t - mean) / std
    P_later(t) = 1 / (1 + exp(y (1.5976 + 0.070566 y²)))
    phi(t) = log10(1 + exp(y (1.5976 + 0.070566 y²)))

computed here as a softplus (no overflow, no ``log10(0)``) and capped at
:data:`MAX_PHI`. The window starts from two samples at
``expected_interval ± expected_interval / 4`` (Akka's bootstrap), so a host
that just connected is judged as a host that pings every ``ping.interval``
with a generous spread until its own pings replace them.

phi grows with t, so the elapsed time at which it reaches a threshold has a
closed form (:meth:`PhiAccrualDetector.crossing`: the real root of the cubic
``0.070566 y³ + 1.5976 y = ln(10^threshold - 1)``): the monitor computes each
host's deadline once per ping and sleeps until it, instead of polling phi.

Everything here is O(1) per ping and holds no lock: the caller (the ping map)
owns each window.
"""

from __future__ import annotations

import array
import math
from typing import TYPE_CHECKING, final

import attrs

from cloudha.errors import ConfigurationError

if TYPE_CHECKING:
    from cloudha.settings import Settings

__all__ = ["MAX_PHI", "ArrivalWindow", "PhiAccrualDetector", "phi"]

MAX_PHI = 100.0
"""The highest phi reported: P_later below 10^-100 is "certainly late" in any unit."""

_A = 1.5976
_B = 0.070566
_LN10 = math.log(10.0)
_MAX_Y = 1e6  # far past MAX_PHI; keeps y³ finite


def _softplus(z: float) -> float:
    """``log(1 + exp(z))`` without overflow or loss of precision."""
    if z > 0.0:
        return z + math.log1p(math.exp(-z))
    return math.log1p(math.exp(z))


def phi(elapsed: float, mean: float, std_deviation: float) -> float:
    """Suspicion level after ``elapsed`` seconds, for arrivals of ``mean`` and ``std_deviation``.

    ``mean`` already includes any acceptable pause and ``std_deviation`` its
    floor (both as :meth:`PhiAccrualDetector.phi` passes them). Returns a
    value in ``[0, MAX_PHI]``; 0 long before ``mean``, ``log10(2)`` at ``mean``.

    Raises:
        ValueError: for a ``std_deviation`` that is not > 0.
    """
    if not std_deviation > 0.0:
        raise ValueError(f"std_deviation must be > 0, got {std_deviation!r}")
    y = (elapsed - mean) / std_deviation
    y = max(-_MAX_Y, min(_MAX_Y, y))
    z = y * (_A + _B * y * y)
    return min(MAX_PHI, _softplus(z) / _LN10)


def _y_at(threshold: float) -> float:
    """The standardised lateness y at which phi equals ``threshold`` (> 0)."""
    target = math.log(math.expm1(threshold * _LN10))  # z with softplus(z) = threshold·ln10
    # 0.070566 y³ + 1.5976 y - target = 0: one real root (the cubic is increasing).
    p = _A / _B
    q = -target / _B
    root = math.sqrt(q * q / 4.0 + p * p * p / 27.0)
    y = math.cbrt(-q / 2.0 + root) + math.cbrt(-q / 2.0 - root)
    for _ in range(2):  # Newton steps: Cardano's form loses digits near y = 0
        y -= (_B * y**3 + _A * y - target) / (3.0 * _B * y * y + _A)
    return y


@final
class ArrivalWindow:
    """A host's last inter-arrival intervals (a ring buffer) and their mean and spread.

    O(1) per :meth:`add`: running sums of the samples shifted by the expected
    interval (so the sum of squares does not cancel), recomputed exactly from
    the buffer each time the ring wraps (amortised O(1), no drift).

    Args:
        size: the most samples kept (``cloudha.phi.window``), at least 2.
        expected_interval: the bootstrap (Akka's "first heartbeat estimate"):
            the window starts with ``expected ± expected / 4``.
    """

    __slots__ = ("_count", "_next", "_offset", "_samples", "_size", "_squares", "_sum")

    def __init__(self, size: int, expected_interval: float) -> None:
        if size < 2:
            raise ValueError(f"an arrival window holds at least 2 samples, not {size!r}")
        self._size = size
        self._offset = expected_interval
        self._samples = array.array("d")
        self._next = 0
        self._count = 0
        self._sum = 0.0
        self._squares = 0.0
        spread = expected_interval / 4.0
        self.add(expected_interval - spread)
        self.add(expected_interval + spread)

    def add(self, interval: float) -> None:
        """Record one inter-arrival interval (seconds); the oldest leaves a full window."""
        shifted = interval - self._offset
        samples = self._samples
        if self._count < self._size:
            samples.append(shifted)
            self._count += 1
            self._sum += shifted
            self._squares += shifted * shifted
            return
        old = samples[self._next]
        samples[self._next] = shifted
        self._next = (self._next + 1) % self._size
        if self._next == 0:
            self._sum = math.fsum(samples)
            self._squares = math.fsum(s * s for s in samples)
        else:
            self._sum += shifted - old
            self._squares += shifted * shifted - old * old

    def __len__(self) -> int:
        return self._count

    @property
    def mean(self) -> float:
        """Mean interval of the window, in seconds."""
        return self._offset + self._sum / self._count

    @property
    def std_deviation(self) -> float:
        """Population standard deviation of the window, in seconds (>= 0)."""
        average = self._sum / self._count
        return math.sqrt(max(0.0, self._squares / self._count - average * average))


@final
@attrs.frozen
class PhiAccrualDetector:
    """The phi accrual parameters, and phi and its crossing time for a window.

    Attributes:
        threshold: phi at or above which a host is behind (``cloudha.phi.threshold``).
        min_std_deviation: floor of the standard deviation, seconds
            (``cloudha.phi.min.std.deviation``): perfectly regular pings must
            not make a few milliseconds of delay look fatal.
        acceptable_pause: seconds added to the mean (``cloudha.phi.acceptable.pause``):
            a pause this long (a GC, a busy agent, a slow link) costs no suspicion.
        window: inter-arrival samples kept per host (``cloudha.phi.window``).
        expected_interval: the bootstrap interval, seconds (``ping.interval``).
    """

    threshold: float
    min_std_deviation: float
    acceptable_pause: float
    window: int
    expected_interval: float
    _y: float = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        for name, value in (
            ("threshold", self.threshold),
            ("min_std_deviation", self.min_std_deviation),
            ("expected_interval", self.expected_interval),
        ):
            if not (isinstance(value, int | float) and 0.0 < value < math.inf):
                raise ConfigurationError(
                    f"PhiAccrualDetector {name} must be a finite number > 0, got {value!r}",
                    key=name,
                    value=value,
                )
        if not (isinstance(self.acceptable_pause, int | float) and self.acceptable_pause >= 0.0):
            raise ConfigurationError(
                f"PhiAccrualDetector acceptable_pause must be >= 0, got {self.acceptable_pause!r}",
                key="acceptable_pause",
                value=self.acceptable_pause,
            )
        if not (isinstance(self.window, int) and self.window >= 2):
            raise ConfigurationError(
                f"PhiAccrualDetector window must be a whole number >= 2, got {self.window!r}",
                key="window",
                value=self.window,
            )
        object.__setattr__(self, "_y", _y_at(self.threshold))

    @classmethod
    def from_settings(cls, settings: Settings) -> PhiAccrualDetector | None:
        """The detector ``settings`` configure; None when ``cloudha.phi.enabled`` is false."""
        if not settings.cloudha_phi_enabled:
            return None
        return cls(
            threshold=settings.cloudha_phi_threshold,
            min_std_deviation=settings.cloudha_phi_min_std_deviation,
            acceptable_pause=settings.cloudha_phi_acceptable_pause,
            window=settings.cloudha_phi_window,
            expected_interval=settings.ping_interval,
        )

    def new_window(self) -> ArrivalWindow:
        """A bootstrapped window for a host that just connected."""
        return ArrivalWindow(self.window, self.expected_interval)

    def _model(self, window: ArrivalWindow) -> tuple[float, float]:
        return (
            window.mean + self.acceptable_pause,
            max(window.std_deviation, self.min_std_deviation),
        )

    def phi(self, window: ArrivalWindow, elapsed: float) -> float:
        """phi ``elapsed`` seconds after the last ping of the host whose window this is."""
        mean, std = self._model(window)
        return phi(elapsed, mean, std)

    def crossing(self, window: ArrivalWindow) -> float:
        """Seconds after the last ping at which phi reaches :attr:`threshold`."""
        mean, std = self._model(window)
        return mean + self._y * std
