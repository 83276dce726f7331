"""Packaging: the core install runs the library and the simulator; each adapter names its extra.

The core-only install is modelled in a subprocess whose import system refuses
every optional dependency (a ``sys.meta_path`` finder raising ImportError),
which is what a machine without them does, at a fraction of a venv's cost.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path
from types import ModuleType

import pytest

from cloudha._extras import EXTRAS, lazy_module, require
from cloudha.errors import ConfigurationError, MissingExtraError

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = ROOT / "examples" / "scenarios" / "single-host-crash.toml"

OPTIONAL = (
    "paramiko",
    "libvirt",
    "pyghmi",
    "sushy",
    "psycopg",
    "prometheus_client",
    "matplotlib",
)

BLOCKER = textwrap.dedent(
    f"""
    import importlib.abc, sys
    BLOCKED = {OPTIONAL!r}
    class _CoreOnly(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in BLOCKED:
                raise ImportError(f"No module named {{name!r}} (blocked: core-only install)",
                                  name=name)
            return None
    sys.meta_path.insert(0, _CoreOnly())
    for blocked in BLOCKED:
        try:
            __import__(blocked)
        except ImportError:
            pass
        else:
            raise SystemExit(f"the blocker let {{blocked}} through")
    """
)


def _run_core_only(code: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-c", BLOCKER + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
        env=env,
    )


def _loaded(result: subprocess.CompletedProcess[str]) -> dict[str, object]:
    assert result.returncode == 0, result.stderr
    loaded: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
    return loaded


def test_the_library_and_the_simulator_run_without_any_extra() -> None:
    result = _run_core_only(
        f"""
        import json, sys
        import cloudha
        import cloudha.testing
        import cloudha.cli
        document = cloudha.testing.simulate({str(SCENARIO)!r})
        leaked = sorted(m for m in sys.modules if m.partition(".")[0] in BLOCKED)
        print(json.dumps({{
            "cloudha": cloudha.__file__,
            "invariants": document["invariants"],
            "events": len(document["events"]),
            "leaked": leaked,
        }}))
        """
    )
    out = _loaded(result)
    assert out["cloudha"] == str(ROOT / "cloudha" / "__init__.py")
    assert out["leaked"] == []
    assert isinstance(out["events"], int)
    assert out["events"] > 0
    invariants = out["invariants"]
    assert isinstance(invariants, dict)
    assert invariants
    assert set(invariants.values()) == {0}, invariants


def test_the_simulate_command_runs_without_any_extra() -> None:
    result = _run_core_only(
        f"""
        import runpy, sys
        sys.argv = ["cloudha", "simulate", {str(SCENARIO)!r}, "--json"]
        runpy.run_module("cloudha", run_name="__main__", alter_sys=True)
        """
    )
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["scenario"]["hosts"] == 3
    assert any(e["kind"] == "fault" for e in document["events"])


ADAPTERS = {
    "ssh": "from cloudha.transport.ssh import SSHTransport; SSHTransport()",
    "libvirt": (
        "from cloudha.transport.libvirt import LibvirtHypervisorProbe; LibvirtHypervisorProbe()"
    ),
    "libvirt-orchestrator": (
        "from cloudha.ha.libvirt_orchestrator import LibvirtOrchestrator; "
        "LibvirtOrchestrator({'h1': 'test:///default'})"
    ),
    "ipmi": "from cloudha.oobm.ipmi import PyghmiDriver; PyghmiDriver()",
    "ipmi-session": (
        "from cloudha.oobm.ipmi import pyghmi_command; "
        "pyghmi_command(address='127.0.0.1', port=623, username='u', password='p')"
    ),
    "redfish": "from cloudha.oobm.redfish import RedfishDriver; RedfishDriver()",
    "metrics": (
        "from cloudha.oobm import OutOfBandManager, StaticOobmConfigs\n"
        "from cloudha.oobm.metrics import register_oobm_metrics\n"
        "from cloudha.testing import FakeClock\n"
        "register_oobm_metrics(OutOfBandManager(clock=FakeClock(), "
        "configs=StaticOobmConfigs({}), drivers=[]))"
    ),
    "plot": (
        "from cloudha.plot import plot_timeline\n"
        "plot_timeline({'scenario': {'until': 1.0}, 'events': [], 'final': {'hosts': {}}},"
        " 'never-written.svg')"
    ),
    # The exporter's module imports without prometheus-client; building one names the extra.
    "metrics-exporter": "from cloudha.metrics import Metrics; Metrics()",
}

DISTRIBUTION = {
    "ssh": "paramiko",
    "libvirt": "libvirt-python",
    "ipmi": "pyghmi",
    "redfish": "sushy",
    "metrics": "prometheus-client",
    "plot": "matplotlib",
}


def test_each_adapter_built_without_its_extra_names_the_extra() -> None:
    result = _run_core_only(
        f"""
        import json
        from cloudha.errors import MissingExtraError
        from cloudha.oobm.drivers import default_power_drivers
        outcome = {{}}
        for name, build in {ADAPTERS!r}.items():
            try:
                exec(build)
            except MissingExtraError as exc:
                outcome[name] = [exc.extra, str(exc)]
            except Exception as exc:
                outcome[name] = ["raised " + type(exc).__name__, str(exc)]
            else:
                outcome[name] = ["built", ""]
        outcome["default drivers"] = [d.name for d in default_power_drivers()]
        print(json.dumps(outcome))
        """
    )
    outcome = _loaded(result)
    assert outcome.pop("default drivers") == ["ipmitool"]
    for adapter, pair in outcome.items():
        assert isinstance(pair, list)
        extra, message = pair
        wanted = adapter.partition("-")[0]
        assert extra == wanted, (adapter, extra, message)
        assert f"pip install 'cloudha[{wanted}]'" in message
        assert f"needs {DISTRIBUTION[wanted]}" in message
    assert sorted(outcome) == sorted(ADAPTERS)


# -- the helper itself, in process ----------------------------------------------------


def test_require_names_the_adapter_the_distribution_and_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "libvirt", None)
    with pytest.raises(MissingExtraError) as caught:
        require("libvirt", "libvirt", "the libvirt probe")
    assert str(caught.value).startswith(
        "the libvirt probe needs libvirt-python: pip install 'cloudha[libvirt]'"
    )
    assert isinstance(caught.value, ConfigurationError)
    assert (caught.value.extra, caught.value.module) == ("libvirt", "libvirt")


def test_require_names_the_dependency_that_is_missing_not_the_module_asked_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # cloudha's own module that subclasses paramiko: the message must say paramiko.
    monkeypatch.delitem(sys.modules, "cloudha.transport._ssh_keys", raising=False)
    monkeypatch.setitem(sys.modules, "paramiko", None)
    with pytest.raises(MissingExtraError, match=r"needs paramiko: pip install 'cloudha\[ssh\]'"):
        require("cloudha.transport._ssh_keys", "ssh", "the SSH transport")


def test_require_returns_the_module_when_installed() -> None:
    assert require("json", "ssh", "a test") is json


def test_an_unknown_extra_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown extra 'sssh'"):
        require("json", "sssh", "a test")
    with pytest.raises(ValueError, match="unknown extra 'sssh'"):
        lazy_module("json", "sssh", "a test")


def test_a_lazy_module_imports_at_first_use_and_sees_patches(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name = "cloudha_test_lazy_target"
    target = ModuleType(name)
    target.value = 1  # type: ignore[attr-defined]
    lazy = lazy_module(name, "ssh", "the test adapter")
    with pytest.raises(MissingExtraError, match="the test adapter needs"):
        _ = lazy.value
    monkeypatch.setitem(sys.modules, name, target)
    assert lazy.value == 1
    monkeypatch.setattr(target, "value", 2)
    assert lazy.value == 2
    with pytest.raises(AttributeError):
        _ = lazy.__wrapped__  # introspection imports nothing and finds nothing


def test_extras_match_pyproject_and_the_core_is_exactly_six_libraries() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = sorted(
        dep.split(">")[0].split("=")[0].split("[")[0].strip() for dep in project["dependencies"]
    )
    assert core == ["alembic", "attrs", "click", "rich", "sqlalchemy", "tenacity"]
    optional = project["optional-dependencies"]
    for extra, distributions in EXTRAS.items():
        declared = tuple(dep.split(">")[0] for dep in optional[extra])
        assert declared == distributions, extra
    assert optional["all"] == [f"cloudha[{','.join(EXTRAS)}]"]


def test_the_docs_name_every_extra() -> None:
    readme = (ROOT / "README.md").read_text()
    transports = (ROOT / "docs" / "transports.md").read_text()
    for extra in (*EXTRAS, "all"):
        assert f"| `{extra}` |" in readme, extra
    for extra in EXTRAS:
        assert f"| `{extra}` |" in transports, extra
