"""``cloudha run`` in a group: the server id check (:func:`cloudha.cli.run.id_in_use`)."""

from __future__ import annotations

from typing import Any

import attrs

from cloudha.cli.run import id_in_use
from cloudha.settings import Settings
from cloudha.testing import FakeClock, FakeServerRegistry


@attrs.define
class _Cluster:
    registry: FakeServerRegistry


@attrs.define
class _Server:
    server_id: str
    cluster: _Cluster | None
    settings: Settings = attrs.Factory(
        lambda: Settings.from_mapping({"cloudha.ms.heartbeat.interval": 2})
    )


def _server(registry: FakeServerRegistry | None, server_id: str = "ms1") -> Any:
    return _Server(server_id, None if registry is None else _Cluster(registry))


def test_a_server_alone_or_new_to_the_registry_is_free() -> None:
    assert id_in_use(_server(None)) is None
    registry = FakeServerRegistry(FakeClock())
    registry.register("ms2", "10.0.0.2")
    slept: list[float] = []
    assert id_in_use(_server(registry), sleep=slept.append) is None
    assert slept == []  # no row of its own: nothing to watch


def test_a_row_whose_heartbeat_stands_still_is_a_crashed_server_and_may_be_restarted() -> None:
    registry = FakeServerRegistry(FakeClock())
    registry.register("ms1", "10.0.0.1")
    slept: list[float] = []
    assert id_in_use(_server(registry), sleep=slept.append) is None
    assert slept == [1.0] * 4  # two heartbeat intervals, watched


def test_a_row_left_or_departed_is_free_at_once() -> None:
    registry = FakeServerRegistry(FakeClock())
    epoch = registry.register("ms1", "10.0.0.1")
    assert registry.leave("ms1", epoch)
    slept: list[float] = []
    assert id_in_use(_server(registry), sleep=slept.append) is None
    assert slept == []


def test_a_live_server_heartbeating_under_the_id_is_named() -> None:
    registry = FakeServerRegistry(FakeClock())
    epoch = registry.register("ms1", "10.0.0.1")

    def beat(_seconds: float) -> None:
        registry.heartbeat("ms1", epoch)

    why = id_in_use(_server(registry), sleep=beat)
    assert why is not None
    assert "server id 'ms1' is in use" in why
    assert "10.0.0.1" in why
    assert "--server-id" in why
