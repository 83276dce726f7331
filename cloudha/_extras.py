"""Optional dependencies: loaded when an adapter is used, named with their extra when missing.

``pip install cloudha`` brings only the core (attrs, SQLAlchemy, Alembic,
tenacity, click, rich): enough to ``import cloudha``, embed the detection and
HA machinery and run ``cloudha simulate``. Each adapter to a real system
needs an extra, listed in :data:`EXTRAS`. Adapter modules import fine
without it; building the adapter raises :class:`~cloudha.errors.MissingExtraError`,
a :class:`~cloudha.errors.ConfigurationError` that says what to install.

An adapter module refers to its optional module through :func:`lazy_module`,
so that type checkers see the real module and nothing is imported until the
adapter is used::

    if TYPE_CHECKING:
        import paramiko
    else:
        paramiko = lazy_module("paramiko", "ssh", "the SSH transport")

and its constructor calls :func:`require` first, so that a missing extra is
reported when the adapter is built, not at its first call.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any, Final

from cloudha.errors import MissingExtraError

__all__ = ["EXTRAS", "lazy_module", "require"]

EXTRAS: Final[dict[str, tuple[str, ...]]] = {
    "ssh": ("paramiko",),
    "libvirt": ("libvirt-python",),
    "ipmi": ("pyghmi",),
    "redfish": ("sushy",),
    "postgres": ("psycopg[binary]",),
    "metrics": ("prometheus-client",),
    "plot": ("matplotlib",),
}
"""Each extra and the distributions it installs (``[project.optional-dependencies]``)."""

_DISTRIBUTION: Final[dict[str, str]] = {
    "paramiko": "paramiko",
    "libvirt": "libvirt-python",
    "pyghmi": "pyghmi",
    "sushy": "sushy",
    "requests": "requests",
    "psycopg": "psycopg",
    "prometheus_client": "prometheus-client",
    "matplotlib": "matplotlib",
}
"""The distribution that provides each optional top-level module, for messages."""


def require(module: str, extra: str, what: str) -> ModuleType:
    """Import ``module`` (an optional dependency of ``what``) and return it.

    Args:
        module: the dotted module name, e.g. ``"paramiko"`` or ``"sushy.auth"``.
        extra: the cloudha extra that installs it (a key of :data:`EXTRAS`).
        what: the adapter that needs it, as the subject of a sentence
            (``"the SSH transport"``).

    Raises:
        MissingExtraError: the module cannot be imported; the message names
            ``what``, the distribution and ``pip install 'cloudha[extra]'``.
    """
    if extra not in EXTRAS:  # a programming error in cloudha itself
        raise ValueError(f"unknown extra {extra!r}")
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        # exc.name is the module that is missing, which may be a dependency of ``module``.
        top = (exc.name or module).partition(".")[0]
        distribution = _DISTRIBUTION.get(top, top)
        raise MissingExtraError(
            f"{what} needs {distribution}: pip install 'cloudha[{extra}]' ({exc})",
            extra=extra,
            module=module,
        ) from exc


class _LazyModule(ModuleType):
    """Stands in for an optional module: every attribute is read from the real one.

    Nothing is cached here, so patching the real module (as tests do) is seen.
    """

    def __init__(self, module: str, extra: str, what: str) -> None:
        super().__init__(module, f"lazily imported {module} (cloudha[{extra}])")
        self._cloudha_need = (module, extra, what)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)  # introspection (copy, pickle, doctest) imports nothing
        return getattr(require(*self._cloudha_need), name)

    def __repr__(self) -> str:
        module, extra, _ = self._cloudha_need
        return f"<lazy module {module!r} (cloudha[{extra}])>"


def lazy_module(module: str, extra: str, what: str) -> Any:
    """A stand-in for ``module`` that imports it (with :func:`require`) at first attribute use."""
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}")
    return _LazyModule(module, extra, what)
