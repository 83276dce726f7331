"""docs/ stays true to the code."""

from __future__ import annotations

import enum
import importlib.util
import re
from collections.abc import Iterable
from pathlib import Path

import attrs
import pytest

import cloudha
import cloudha.ports
from cloudha.evidence import Evidence, EvidenceSink
from cloudha.ha.orchestrator import StartParams
from cloudha.hostha.fsm import HA_TRANSITIONS
from cloudha.oobm.manager import OobmConfigSource
from cloudha.oobm.power import OobmConfig, PowerDriver, PowerResult
from cloudha.status import TRANSITIONS

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
SPEC = DOCS / "design" / "spec.md"


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def test_settings_doc_is_generated_from_the_catalogue() -> None:
    spec = importlib.util.spec_from_file_location(
        "settings_doc", ROOT / "scripts" / "settings_doc.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    current = _read(DOCS / "settings.md")
    assert current == module.render(), "run: python scripts/settings_doc.py"


def test_every_fault_kind_is_documented() -> None:
    from cloudha.testing.scenario import FAULT_KINDS

    text = _read(DOCS / "simulator.md")
    for kind in FAULT_KINDS:
        assert f"`{kind}`" in text, kind


# -- nothing outside the repository ------------------------------------------------


def _cited_files() -> list[Path]:
    files = [ROOT / "README.md", *DOCS.rglob("*.md")]
    for folder in ("cloudha", "scripts", "examples", "docs"):
        files.extend((ROOT / folder).rglob("*.py"))
    return sorted(set(files))


# The shared design folder the project started from is not part of the repository.
OUTSIDE = re.compile(r"\.\./shared|\bARCHITECTURE\b|\bspec/")


def test_no_file_cites_what_is_outside_the_repository() -> None:
    cited = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in _cited_files()
        for number, line in enumerate(_read(path).splitlines(), 1)
        if OUTSIDE.search(line)
    ]
    assert not cited, "cite docs/design/spec.md or another page instead:\n" + "\n".join(cited)


def _spec_sections() -> set[str]:
    text = _read(SPEC)
    sections = set(re.findall(r"^#{2,3} §(\d+(?:\.\d+)?) ", text, flags=re.MULTILINE))
    known_problems = re.search(r"^## §10 .*?(?=^## )", text, flags=re.MULTILINE | re.DOTALL)
    assert known_problems is not None
    items = re.findall(r"^(\d+)\. ", known_problems.group(0), flags=re.MULTILINE)
    sections.update(f"10.{item}" for item in items)
    return sections


def test_every_spec_section_cited_exists() -> None:
    # "spec §2.6" in a docstring or a page means that section of docs/design/spec.md.
    sections = _spec_sections()
    assert {"1.3", "2.6", "3.6", "6.3", "7.3", "8", "10.1"} <= sections
    missing = [
        f"{path.relative_to(ROOT)}: §{number}"
        for path in _cited_files()
        for number in re.findall(r"§(\d+(?:\.\d+)?)", _read(path))
        if number not in sections
    ]
    assert not missing, "no such section in docs/design/spec.md:\n" + "\n".join(missing)


def _table_rows(heading: str) -> list[str]:
    text = _read(SPEC)
    start = text.index(heading)
    end = text.index("\n#", start + 1)
    return [line for line in text[start:end].splitlines() if re.match(r"^\| \d+ \|", line.strip())]


def _rows(table: Iterable[tuple[tuple[enum.Enum | None, enum.Enum], enum.Enum]]) -> list[str]:
    return [
        f"| {i} | {'(none)' if state is None else state.value} | {event.value} | {to.value} |"
        for i, ((state, event), to) in enumerate(table, 1)
    ]


def test_the_spec_tables_are_the_state_machines_of_the_code() -> None:
    assert _table_rows("### §1.3 ") == _rows(TRANSITIONS.items())
    assert _table_rows("### §7.3 ") == _rows(HA_TRANSITIONS.items())


# -- the port types page ------------------------------------------------------------

PORT_TYPES = DOCS / "reference" / "port-types.md"

# Types the ports carry that live outside cloudha.ports.
CARRIED: tuple[type, ...] = (
    cloudha.Host,
    cloudha.Vm,
    cloudha.Pool,
    StartParams,
    OobmConfigSource,
    OobmConfig,
    PowerDriver,
    PowerResult,
    Evidence,
    EvidenceSink,
)


def _port_types() -> list[type]:
    types = [getattr(cloudha.ports, name) for name in cloudha.ports.__all__]
    return [t for t in types if isinstance(t, type)] + list(CARRIED)


def _section(text: str, name: str) -> str:
    match = re.search(rf"^### `{name}`\n(.*?)(?=^##)", text + "\n##", re.MULTILINE | re.DOTALL)
    assert match is not None, f"docs/reference/port-types.md has no section ### `{name}`"
    return match.group(1)


def _members(kind: type) -> list[str]:
    if attrs.has(kind):
        return [field.name for field in attrs.fields(kind)]
    if issubclass(kind, enum.Enum):
        return [member.name for member in kind]
    own = {
        name
        for name, value in vars(kind).items()
        if not name.startswith("_") and (callable(value) or isinstance(value, property))
    }
    return sorted(own | {n for n in getattr(kind, "__annotations__", {}) if not n.startswith("_")})


@pytest.mark.parametrize("kind", _port_types(), ids=lambda kind: kind.__name__)
def test_every_port_type_is_documented_with_each_member(kind: type) -> None:
    section = _section(_read(PORT_TYPES), kind.__name__)
    undocumented = [m for m in _members(kind) if not re.search(rf"`{m}[`(]", section)]
    assert not undocumented, f"{kind.__name__}: document {undocumented} in port-types.md"
