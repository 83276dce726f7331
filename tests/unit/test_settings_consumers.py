"""Every setting is read by exactly the modules its declaration names, or marked unused.

The scan parses each module of ``cloudha/`` (except ``cloudha/settings.py``) and
collects the settings it reads:

* ``<settings>.<attribute>``, where ``<settings>`` is any expression that names a
  :class:`~cloudha.settings.Settings`: a name or attribute ending in ``settings``
  (``settings``, ``self.settings``, ``ctx.settings``, ``self._settings``), a call of
  a function whose name contains ``settings`` (``self.settings_for_zone(zone)``),
  a parameter annotated ``Settings``, or a local name assigned from one of those;
* ``getattr(<settings>, "attribute")`` and ``<settings>.get("cloudha.key")``;
* the derived properties (``behind_on_ping_timeout`` reads ``ping.timeout`` and
  ``ping.interval``).

A read of a settings attribute through anything else (``x.ping_interval`` where
the scan cannot tell ``x`` is a Settings) fails the test, so an alias cannot hide
a read; so does ``getattr`` with a computed name.
"""

from __future__ import annotations

import ast
import importlib.util
import logging
import re
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloudha.settings import KEYS, NOT_USED_YET, KeySpec, Settings

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "cloudha"

ATTRIBUTES: dict[str, str] = {spec.attribute: spec.name for spec in KEYS.values()}

# Settings properties -> the attributes they read.
DERIVED: dict[str, tuple[str, ...]] = {
    "behind_on_ping_timeout": ("ping_timeout", "ping_interval"),
    "command_timeouts": ("commands_timeout",),
}

# Attribute names so common that other objects have them too (``event.wait()``,
# ``config.port``); on a receiver the scan cannot tell is a Settings they are not
# counted as reads, and not reported as strays.
COMMON_NAMES = frozenset({"wait", "port"})

# Fields of other objects that carry a setting's value, as written in the code:
# ``StartParams.ha_tag`` hands ``ha.tag`` (read by the HA manager) to the orchestrator;
# ``decisions.Policy`` carries the §3.8 values its ``from_settings`` read.
NOT_SETTINGS = frozenset(
    {
        "params.ha_tag",
        "policy.restart_retry_interval",
        "policy.migrate_retry_interval",
        "policy.stop_retry_interval",
        "policy.investigate_retry_interval",
        "policy.force_ha",
        "policy.max_retries",
    }
)

_SETTINGS_ANNOTATION = re.compile(r"\bSettings\b")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _call_name(func: ast.expr) -> str:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return ""


class _Scan(ast.NodeVisitor):
    """Collect settings reads (attribute names) and stray reads of one module."""

    def __init__(self) -> None:
        self.aliases: set[str] = set()
        self.reads: set[str] = set()
        self.strays: list[str] = []

    def is_settings(self, node: ast.expr) -> bool:
        if isinstance(node, ast.Name):
            return node.id.lower().endswith("settings") or node.id in self.aliases
        if isinstance(node, ast.Attribute):
            return node.attr.lower().endswith("settings")
        if isinstance(node, ast.Call):
            if isinstance(node.func, ast.Name) and node.func.id == "Settings":
                return True
            if isinstance(node.func, ast.Attribute) and self.is_settings(node.func.value):
                # Settings.from_mapping(...), settings.with_overrides(...), self.settings_for_zone()
                return node.func.attr != "get"
            return "settings" in _call_name(node.func).lower() and not _call_name(
                node.func
            ).startswith("from_")
        if isinstance(node, ast.Subscript):
            return self.is_settings(node.value)
        return False

    # -- aliases -------------------------------------------------------------

    def collect_aliases(self, tree: ast.AST) -> None:
        """Names assigned from a Settings expression or annotated ``Settings`` (to a fixpoint)."""
        while True:
            before = len(self.aliases)
            for node in ast.walk(tree):
                if isinstance(node, ast.arg) and node.annotation is not None:
                    if _SETTINGS_ANNOTATION.search(ast.unparse(node.annotation)):
                        self.aliases.add(node.arg)
                elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                    if _SETTINGS_ANNOTATION.search(ast.unparse(node.annotation)):
                        self.aliases.add(node.target.id)
                elif isinstance(node, ast.Assign) and self.is_settings(node.value):
                    for target in node.targets:
                        if isinstance(target, ast.Name):
                            self.aliases.add(target.id)
            if len(self.aliases) == before:
                return

    # -- reads ---------------------------------------------------------------

    def visit_Attribute(self, node: ast.Attribute) -> None:
        name = node.attr
        if name in ATTRIBUTES or name in DERIVED:
            if self.is_settings(node.value):
                self.reads.update(DERIVED.get(name, (name,)))
            elif name not in COMMON_NAMES and ast.unparse(node) not in NOT_SETTINGS:
                self.strays.append(f"line {node.lineno}: {ast.unparse(node)}")
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        first = node.args[0] if node.args else None
        literal = first.value if isinstance(first, ast.Constant) else None
        if isinstance(func, ast.Name) and func.id == "getattr" and len(node.args) >= 2:
            target, attribute = node.args[0], node.args[1]
            if self.is_settings(target):
                if isinstance(attribute, ast.Constant) and isinstance(attribute.value, str):
                    self.reads.update(DERIVED.get(attribute.value, (attribute.value,)))
                else:
                    self.strays.append(f"line {node.lineno}: {ast.unparse(node)} (computed name)")
        elif (
            isinstance(func, ast.Attribute)
            and func.attr == "get"
            and isinstance(literal, str)
            and literal in KEYS
            and self.is_settings(func.value)
        ):
            self.reads.add(KEYS[literal].attribute)
        self.generic_visit(node)


def scan_source(source: str) -> tuple[set[str], list[str]]:
    """The settings attributes ``source`` reads, and the reads the scan cannot attribute."""
    tree = ast.parse(source)
    scan = _Scan()
    scan.collect_aliases(tree)
    scan.visit(tree)
    return scan.reads, scan.strays


def _modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == PACKAGE / "settings.py":
            continue
        yield _module_name(path), path


def _scan_package() -> tuple[dict[str, set[str]], dict[str, list[str]]]:
    """attribute -> modules reading it; module -> stray reads."""
    readers: dict[str, set[str]] = defaultdict(set)
    strays: dict[str, list[str]] = {}
    for module, path in _modules():
        reads, stray = scan_source(path.read_text(encoding="utf-8"))
        for attribute in reads:
            readers[attribute].add(module)
        if stray:
            strays[module] = stray
    return readers, strays


READERS, STRAYS = _scan_package()


# ---------------------------------------------------------------------------
# The scanner itself: it must see every form of read, or the checks below prove nothing.


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("def f(settings):\n    return settings.alert_wait\n", {"alert_wait"}),
        ("def f(self):\n    return self.settings.ha_workers\n", {"ha_workers"}),
        ("def f(self):\n    return self._settings.ha_tag\n", {"ha_tag"}),
        ("def f(ctx):\n    return ctx.settings.force_ha\n", {"force_ha"}),
        (
            "def f(self, z):\n    return self.settings_for_zone(z).vm_ha_enabled\n",
            {"vm_ha_enabled"},
        ),
        (
            "def f(ctx):\n    s = ctx.settings\n    return s.kvm_ha_fence_timeout\n",
            {"kvm_ha_fence_timeout"},
        ),
        ("def f(cfg: Settings):\n    return cfg.redfish_retries\n", {"redfish_retries"}),
        ("def f(cfg: 'Settings | None'):\n    return cfg.redfish_retries\n", {"redfish_retries"}),
        ("def f(settings):\n    return settings.wait\n", {"wait"}),
        ("def f(settings):\n    return getattr(settings, 'port')\n", {"port"}),
        ("def f(settings):\n    return settings.get('alert.wait')\n", {"alert_wait"}),
        (
            "def f(settings):\n    return settings.behind_on_ping_timeout\n",
            {"ping_timeout", "ping_interval"},
        ),
        ("def f():\n    return Settings().time_to_sleep\n", {"time_to_sleep"}),
        # Not settings: other objects' attributes of the same name.
        ("def f(event, host):\n    event.wait(1)\n    return host.port\n", set()),
        ("def f(self, zone):\n    return self._zone_settings.get(zone, None)\n", set()),
        ("def f(t):\n    return HeartbeatTiming.from_settings(t).frequency\n", set()),
    ],
)
def test_the_scan_sees_every_form_of_read(source: str, expected: set[str]) -> None:
    reads, strays = scan_source(source)
    assert reads == expected
    assert strays == []


@pytest.mark.parametrize(
    "source",
    [
        "def f(x):\n    return x.ping_interval\n",
        "def f(x):\n    return x.behind_on_ping_timeout\n",
        "def f(settings, name):\n    return getattr(settings, name)\n",
    ],
)
def test_a_read_the_scan_cannot_attribute_is_reported(source: str) -> None:
    reads, strays = scan_source(source)
    assert reads == set()
    assert len(strays) == 1


def test_every_settings_property_is_known_to_the_scan() -> None:
    properties = {name for name, value in vars(Settings).items() if isinstance(value, property)}
    assert properties == set(DERIVED)
    for attributes in DERIVED.values():
        assert set(attributes) <= set(ATTRIBUTES)


# ---------------------------------------------------------------------------
# The declarations against the code.


def test_no_read_escapes_the_scan() -> None:
    assert STRAYS == {}, (
        "settings read through an expression the scan cannot tell is a Settings; "
        "read them as settings.<attribute> (or annotate the name as Settings)"
    )


@pytest.mark.parametrize("spec", list(KEYS.values()), ids=list(KEYS))
def test_each_key_is_read_by_exactly_its_declared_consumers(spec: KeySpec) -> None:
    read_by = READERS.get(spec.attribute, set())
    if not spec.used:
        assert read_by == set(), (
            f"{spec.name} is marked NOT_USED_YET but {sorted(read_by)} read it: "
            "declare them as its consumers"
        )
    else:
        assert read_by == set(spec.consumers), (
            f"{spec.name}: declared consumers {sorted(spec.consumers)}, "
            f"modules that read it {sorted(read_by)}"
        )


def test_every_attribute_read_belongs_to_a_key() -> None:
    assert set(READERS) <= set(ATTRIBUTES)


@pytest.mark.parametrize("spec", [s for s in KEYS.values() if s.used], ids=lambda s: s.name)
def test_declared_consumers_are_importable_modules(spec: KeySpec) -> None:
    for module in spec.consumers:
        assert importlib.util.find_spec(module) is not None, module


def test_unused_keys_are_the_ones_marked() -> None:
    unused = [spec.name for spec in KEYS.values() if not spec.used]
    assert all(KEYS[name].consumers == NOT_USED_YET for name in unused)
    # Every key is either read or marked: nothing in between.
    assert len(unused) + sum(1 for s in KEYS.values() if s.used) == len(KEYS)


# ---------------------------------------------------------------------------
# The warning for a key nothing reads.


def test_an_unused_key_is_accepted_with_a_warning_naming_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="cloudha.settings"):
        settings = Settings.from_mapping({"wait": 900}, source="copied.toml")
    assert settings.wait == 900.0
    records = [r for r in caplog.records if r.name == "cloudha.settings"]
    assert len(records) == 1
    message = records[0].getMessage()
    assert records[0].levelno == logging.WARNING
    assert "'wait'" in message
    assert "copied.toml" in message
    assert "not used yet" in message


def test_a_used_key_gives_no_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="cloudha.settings"):
        Settings.from_mapping({"ping.interval": 30, "ha.workers": 3})
    assert [r for r in caplog.records if r.name == "cloudha.settings"] == []


def test_the_environment_warns_about_an_unused_key(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="cloudha.settings"):
        settings = Settings.from_env({"CLOUDHA_DIRECT_AGENT_POOL_SIZE": "40"})
    assert settings.direct_agent_pool_size == 40
    messages = [r.getMessage() for r in caplog.records if r.name == "cloudha.settings"]
    assert len(messages) == 1
    assert "'direct.agent.pool.size'" in messages[0]
    assert "CLOUDHA_DIRECT_AGENT_POOL_SIZE" in messages[0]


def test_a_whole_copied_config_warns_once_per_unused_key(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="cloudha.settings"):
        Settings.from_mapping(Settings().to_mapping())
    named = sorted(
        name
        for record in caplog.records
        if record.name == "cloudha.settings"
        for name in KEYS
        if f"{name!r}" in record.getMessage()
    )
    assert named == sorted(spec.name for spec in KEYS.values() if not spec.used)
