"""Loading plugins from entry-point groups, one way for every extension point.

Each entry point names a factory: a callable taking the extension point's
context and returning the plugin (a class whose ``__init__`` takes the
context works, and so does a class with a ``from_context`` classmethod). A
plugin that cannot be imported, whose factory raises, or that builds
something of the wrong kind stops start-up with a
:class:`~cloudha.errors.ConfigurationError` naming the entry point: a
witness or fencer silently missing from an HA chain is worse than a clear
start-up failure.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import logging
from collections.abc import Iterable
from typing import Any, TypeVar

from cloudha.errors import ConfigurationError

__all__ = ["check_names", "load_plugins"]

log = logging.getLogger(__name__)

T = TypeVar("T")


def load_plugins(
    group: str,
    context: object,
    kind: type[T],
    *,
    what: str,
    needs: str,
    entry_points: Iterable[importlib.metadata.EntryPoint] | None = None,
) -> list[T]:
    """Build every plugin of entry-point ``group`` from ``context``, sorted by entry-point name.

    Args:
        group: the entry-point group.
        context: handed to each factory.
        kind: a runtime-checkable Protocol (or class) each plugin must satisfy.
        what: the plugin kind in messages ("investigator", "fencer").
        needs: the members the kind requires, for the error message.
        entry_points: the entry points to load (default: those installed).

    Raises:
        ConfigurationError: a plugin failed to load or built the wrong thing;
            ``key`` is the group and ``value`` the entry point's name.
    """
    if entry_points is None:
        entry_points = importlib.metadata.entry_points(group=group)
    loaded: list[T] = []
    for ep in sorted(entry_points, key=lambda e: e.name):
        where = f"{what} plugin {ep.name!r} ({ep.value})"
        try:
            factory = ep.load()
        except Exception as exc:
            raise ConfigurationError(
                f"{where} failed to load: {type(exc).__name__}: {exc}", key=group, value=ep.name
            ) from exc
        if not callable(factory):
            raise ConfigurationError(f"{where} is not callable", key=group, value=ep.name)
        build: Any = getattr(factory, "from_context", factory)
        try:
            plugin = build(context)
        except Exception as exc:
            raise ConfigurationError(
                f"{where} raised while being built: {type(exc).__name__}: {exc}",
                key=group,
                value=ep.name,
            ) from exc
        if not isinstance(plugin, kind):
            article = "an" if kind.__name__[:1].lower() in "aeiou" else "a"
            raise ConfigurationError(
                f"{where} built {type(plugin).__name__}, which is not {article} {kind.__name__} "
                f"(needs {needs})",
                key=group,
                value=ep.name,
            )
        log.info("loaded %s as %s", where, getattr(plugin, "name", plugin))
        loaded.append(plugin)
    return loaded


def check_names(key: str, names: Iterable[str], known: Iterable[str], *, what: str) -> None:
    """Reject a name in setting ``key`` that names no known plugin.

    A name list such as ``ha.investigators.exclude`` that names nothing is a
    typo that silently keeps a witness in (or out of) the HA chain, so it stops
    start-up instead.

    Args:
        key: the setting, e.g. ``"ha.investigators.order"``.
        names: its value.
        known: every name that may appear: the built-ins, CloudStack's own
            names (configurations are copied whole) and the loaded plugins.
        what: the plugin kind in messages ("investigator", "fence builder").

    Raises:
        ConfigurationError: naming the key and the first unknown name, with
            the closest known name when there is one; ``key`` is the setting
            and ``value`` the unknown name.
    """
    pool = sorted(set(known))
    for name in names:
        if name in pool:
            continue
        close = difflib.get_close_matches(name, pool, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigurationError(
            f"{key}: unknown {what} {name!r}{hint}; known: {', '.join(pool)}",
            key=key,
            value=name,
        )
