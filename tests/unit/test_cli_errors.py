"""Every ``cloudha`` command's errors: one line on stderr, the documented exit status, no traceback.

Each :data:`CASES` entry is one command given one kind of bad input (a bad
scenario, a bad database URL, an unknown host, VM or work, a missing file, a
mount point where nothing is mounted). Each runs in-process through click's
``CliRunner``, and once per command through ``python -m cloudha`` in a
subprocess (the real entry point, the real exit status). A new command adds
its cases here; ``test_every_command_has_error_cases`` fails until it does.
The exit codes are the ones of ``cloudha.cli.look`` and docs/cli.md.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs
import click
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from cloudha.cli import main
from cloudha.cli.look import EXIT_DATABASE, EXIT_USAGE
from cloudha.clock import SystemClock
from cloudha.evidence_store import SqlEvidenceStore
from cloudha.ha.store import SqlWorkStore, WorkType, create_schema
from cloudha.model import VmState

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = ROOT / "examples" / "scenarios" / "single-host-crash.toml"
IP = "10.1.2.3"


@attrs.frozen
class Files:
    """What the cases point at, made once per test in ``tmp_path``."""

    tmp: Path
    bad_scenario: Path  # TOML that does not parse
    wrong_scenario: Path  # parses, but a key is wrong
    evidence_url: str  # an evidence database holding no record about anyone
    queue_url: str  # an HA work queue holding work 1
    directory: Path  # a plain directory: nothing mounted there
    bad_inventory: Path  # an inventory whose BMC password variable is not set

    @property
    def missing(self) -> Path:
        return self.tmp / "missing.toml"


@pytest.fixture
def files(tmp_path: Path) -> Files:
    bad = tmp_path / "bad.toml"
    bad.write_text("[hosts\nname = ", encoding="utf-8")
    wrong = tmp_path / "wrong.toml"
    wrong.write_text('[run]\nseed = "one"\n', encoding="utf-8")
    evidence_url = f"sqlite:///{tmp_path / 'evidence.db'}"
    engine = sa.create_engine(evidence_url)
    SqlEvidenceStore(engine, SystemClock()).close()
    engine.dispose()
    queue_url = f"sqlite:///{tmp_path / 'queue.db'}"
    engine = sa.create_engine(queue_url)
    create_schema(engine)
    SqlWorkStore(engine, SystemClock()).add("vm-1", WorkType.HA, VmState.RUNNING)
    engine.dispose()
    directory = tmp_path / "pool"
    directory.mkdir()
    inventory = tmp_path / "inventory.toml"
    inventory.write_text(
        '[server]\nid = "ms1"\n[[hosts]]\nid = "h1"\naddress = "127.0.0.11"\ncluster = "c1"\n'
        'agent = "local"\nlibvirt_uri = "test:///default"\noobm = { driver = "ipmitool",'
        ' address = "10.0.1.1", username = "admin", password_env = "CLOUDHA_TEST_UNSET_PW" }\n',
        encoding="utf-8",
    )
    return Files(tmp_path, bad, wrong, evidence_url, queue_url, directory, inventory)


Argv = Callable[[Files], list[str]]


@attrs.frozen
class Case:
    id: str
    argv: Argv
    status: int
    words: tuple[str, ...]

    @property
    def command(self) -> str:
        """The command path it exercises, e.g. ``queue retry``."""
        return self.id.split(":")[0]


def case(id: str, argv: Argv, status: int, *words: str) -> Case:
    return Case(id, argv, status, words)


BAD_URL = "postgresql+psycopg://cloudha:s3cret@127.0.0.1:1/cloudha"  # nothing listens on port 1


def inventory(f: Files) -> str:
    """A good inventory of one ``agent = "local"`` host (its libvirtd is never reached)."""
    path = f.tmp / "cluster.toml"
    path.write_text(
        "\n".join(
            [
                "[server]",
                'id = "ms1"',
                f'db = "sqlite:///{f.tmp / "cloudha.db"}"',
                "[defaults]",
                'cluster = "c1"',
                'pod = "p1"',
                'zone = "z1"',
                'agent = "local"',
                "watchdog = false",
                "[[hosts]]",
                'id = "h1"',
                'address = "127.0.0.11"',
                'libvirt_uri = "test+tcp://127.0.0.1:1/default"',
                "",
            ]
        ),
        encoding="utf-8",
    )
    return str(path)


CASES: tuple[Case, ...] = (
    # simulate
    case("simulate:bad-toml", lambda f: [str(f.bad_scenario)], EXIT_USAGE, "bad.toml"),
    case("simulate:wrong-key", lambda f: [str(f.wrong_scenario)], EXIT_USAGE, "seed"),
    case("simulate:missing-file", lambda f: [str(f.missing)], EXIT_USAGE, "missing.toml"),
    case(
        "simulate:bad-evidence-db",
        lambda f: [str(SCENARIO), "--evidence-db", "nonsense"],
        EXIT_DATABASE,
        "not a database URL",
    ),
    case("simulate:no-mode", lambda f: [], EXIT_USAGE, "give exactly one"),
    case(
        "simulate:plot-format",
        lambda f: [str(SCENARIO), "--plot", str(f.tmp / "timeline.txt")],
        EXIT_USAGE,
        "--plot",
    ),
    case(
        "simulate:plot-unwritable",
        lambda f: [str(SCENARIO), "--plot", str(f.missing / "timeline.svg")],
        EXIT_USAGE,
        "timeline.svg",
    ),
    # dump
    case("dump:bad-toml", lambda f: [str(f.bad_scenario), "--at", "10"], EXIT_USAGE, "bad.toml"),
    case("dump:missing-file", lambda f: [str(f.missing), "--at", "1"], EXIT_USAGE, "missing"),
    # explain
    case(
        "explain:unknown-host",
        lambda f: ["h-nowhere", "--db", f.evidence_url],
        EXIT_USAGE,
        "no evidence about 'h-nowhere'",
    ),
    case("explain:bad-db-url", lambda f: ["h1", "--db", "nonsense"], EXIT_DATABASE, "nonsense"),
    case(
        "explain:missing-db",
        lambda f: ["h1", "--db", f"sqlite:///{f.tmp / 'none.db'}"],
        EXIT_DATABASE,
        "no such database file",
    ),
    case("explain:unreachable-db", lambda f: ["vm-1", "--db", BAD_URL], EXIT_DATABASE, "127.0.0.1"),
    # queue
    case("queue list:bad-db-url", lambda f: ["--db", "nonsense"], EXIT_DATABASE, "nonsense"),
    case(
        "queue list:missing-db",
        lambda f: ["--db", f"sqlite:///{f.tmp / 'none.db'}"],
        EXIT_DATABASE,
        "no such database file",
    ),
    case("queue list:unreachable-db", lambda f: ["--db", BAD_URL], EXIT_DATABASE, "refused"),
    case(
        "queue list:not-a-queue",
        lambda f: ["--db", f.evidence_url],
        EXIT_DATABASE,
        "no op_ha_work table",
    ),
    case(
        "queue retry:unknown-work",
        lambda f: ["--db", f.queue_url, "42"],
        EXIT_USAGE,
        "no HA work 42",
    ),
    case("queue retry:unreachable-db", lambda f: ["--db", BAD_URL, "1"], EXIT_DATABASE, "refused"),
    case(
        "queue cancel:unknown-work",
        lambda f: ["--db", f.queue_url, "7", "1"],
        EXIT_USAGE,
        "no HA work 7",
    ),
    case("queue cancel:bad-db-url", lambda f: ["--db", "nonsense", "1"], EXIT_DATABASE, "URL"),
    # demo
    case("demo:keep-without-real", lambda f: ["--keep", str(f.tmp)], EXIT_USAGE, "--keep"),
    case("demo:check-with-real", lambda f: ["--real", "--check"], EXIT_USAGE, "--check"),
    case(
        "demo:unknown-victim",
        lambda f: ["--real", "--hosts", "3", "--kill", "kvm9"],
        EXIT_USAGE,
        "--kill kvm9",
        "kvm1, kvm2, kvm3",
    ),
    # run
    case("run:missing-inventory", lambda f: ["--inventory", str(f.missing)], EXIT_USAGE, "missing"),
    case(
        "run:bad-inventory", lambda f: ["--inventory", str(f.bad_scenario)], EXIT_USAGE, "bad.toml"
    ),
    case(
        "run:unreachable-db",
        lambda f: ["--inventory", inventory(f), "--db", BAD_URL],
        EXIT_DATABASE,
        "127.0.0.1",
    ),
    case(
        "run:bad-db-url",
        lambda f: ["--inventory", inventory(f), "--db", "nonsense"],
        EXIT_DATABASE,
        "not a database URL",
    ),
    case(
        "run:bad-server-id",
        lambda f: ["--inventory", inventory(f), "--server-id", "ms 1"],
        EXIT_USAGE,
        "--server-id: 'ms 1' is not a server id",
    ),
    case(
        "run:unreachable-group-db",
        lambda f: ["--inventory", inventory(f), "--db", BAD_URL, "--server-id", "ms2"],
        EXIT_DATABASE,
        "127.0.0.1",
    ),
    case(
        "run:metrics-port",
        lambda f: ["--inventory", inventory(f), "--metrics-port", "70000"],
        EXIT_USAGE,
        "--metrics-port: 70000 is not a port",
    ),
    # status and hosts (the database of cloudha run)
    case("status:bad-db-url", lambda f: ["--db", "nonsense"], EXIT_DATABASE, "nonsense"),
    case(
        "status:missing-db",
        lambda f: ["--db", f"sqlite:///{f.tmp / 'none.db'}"],
        EXIT_DATABASE,
        "no such database file",
    ),
    case("status:unreachable-db", lambda f: ["--db", BAD_URL], EXIT_DATABASE, "refused"),
    case(
        "status:not-a-run-db",
        lambda f: ["--db", f.evidence_url],
        EXIT_DATABASE,
        "no cloudha_host table",
    ),
    case("status:no-db", lambda f: [], EXIT_USAGE, "--db URL"),
    case(
        "hosts:unknown-host",
        lambda f: ["h-nowhere", "--db", f.queue_url],
        EXIT_USAGE,
        "no host 'h-nowhere'",
    ),
    case("hosts:unreachable-db", lambda f: ["--db", BAD_URL], EXIT_DATABASE, "refused"),
    case("hosts:no-db", lambda f: ["h1"], EXIT_USAGE, "--db URL"),
    # config check (the inventory of cloudha run)
    case("config check:missing-file", lambda f: [str(f.missing)], EXIT_USAGE, "missing.toml"),
    case("config check:bad-toml", lambda f: [str(f.bad_scenario)], EXIT_USAGE, "1 problem"),
    case(
        "config check:bad-inventory",
        lambda f: [str(f.bad_inventory)],
        EXIT_USAGE,
        "inventory.toml: 1 problem",
    ),
    # heartbeat
    case(
        "heartbeat write:not-mounted",
        lambda f: ["--once", "--host-ip", IP, "--mount", str(f.directory)],
        EXIT_USAGE,
        "nothing is mounted",
    ),
    case(
        "heartbeat write:missing-mount",
        lambda f: ["--host-ip", IP, "--mount", "/nonexistent"],
        EXIT_USAGE,
        "/nonexistent",
    ),
    case(
        "heartbeat write:bad-ip",
        lambda f: ["--once", "--host-ip", "10.1", "--mount", "/proc"],
        EXIT_USAGE,
        "'--host-ip'",
    ),
    case(
        "heartbeat check:not-mounted",
        lambda f: ["--host-ip", IP, "--mount", str(f.directory)],
        EXIT_USAGE,
        "nothing is mounted",
    ),
    case(
        "heartbeat check:missing-settings",
        lambda f: ["--host-ip", IP, "--settings", str(f.missing)],
        EXIT_USAGE,
        "'--settings'",
    ),
    case(
        "heartbeat activity:not-mounted",
        lambda f: ["--host-ip", IP, "--mount", str(f.directory), "--suspect-time", "0"],
        EXIT_USAGE,
        "nothing is mounted",
    ),
    case(
        "heartbeat activity:bad-volume",
        lambda f: ["--host-ip", IP, "--mount", "/proc", "--suspect-time", "0", "--volume", "/x"],
        EXIT_USAGE,
        "'--volume'",
    ),
)


def _argv(c: Case, f: Files) -> list[str]:
    return [*c.command.split(), *c.argv(f)]


def _check(c: Case, status: int, stdout: str, stderr: str) -> None:
    assert status == c.status, (c.id, status, stdout, stderr)
    assert "Traceback" not in stdout + stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, (c.id, lines)
    assert lines[0].startswith(f"cloudha {c.command.split()[0]}"), lines[0]
    for word in c.words:
        assert word in lines[0], (c.id, word, lines[0])
    assert "s3cret" not in stdout + stderr


@pytest.mark.parametrize("c", CASES, ids=lambda c: c.id)
def test_errors_are_one_line_and_the_documented_status(c: Case, files: Files) -> None:
    result = CliRunner().invoke(main, _argv(c, files))
    assert isinstance(result.exception, SystemExit), result.exception
    _check(c, result.exit_code, result.stdout, result.stderr)


FIRST_PER_COMMAND: dict[str, Case] = {c.command: c for c in reversed(CASES)}
SMOKE: list[Case] = [FIRST_PER_COMMAND[command] for command in sorted(FIRST_PER_COMMAND)]


@pytest.mark.parametrize("c", SMOKE, ids=lambda c: c.id)
def test_python_m_cloudha_fails_cleanly(c: Case, files: Files) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "cloudha", *_argv(c, files)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    _check(c, proc.returncode, proc.stdout, proc.stderr)


def _leaves(group: click.Group, prefix: str = "") -> Iterator[str]:
    for name, command in sorted(group.commands.items()):
        path = f"{prefix}{name}"
        if isinstance(command, click.Group):
            yield from _leaves(command, f"{path} ")
        else:
            yield path


def test_every_command_has_error_cases() -> None:
    missing = sorted(set(_leaves(main)) - {c.command for c in CASES})
    assert not missing, f"add error cases to tests/unit/test_cli_errors.py for: {missing}"


def test_the_docs_give_every_command_and_its_exit_codes() -> None:
    text = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    for command in _leaves(main):
        assert f"cloudha {command}" in text, command
    for c in CASES:
        assert f"| {c.status} |" in text
