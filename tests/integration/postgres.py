"""A throwaway PostgreSQL server for integration tests.

Fixtures (import them into the test module explicitly)::

    from tests.integration.postgres import postgres_db, postgres_server  # noqa: F401

* ``postgres_server`` (session): one server for the session, a
  :class:`PostgresServer`; ``url`` points at its ``postgres`` database.
* ``postgres_db`` (function): the URL of a fresh, empty database
  ``test_<n>`` on that server, dropped (``WITH (FORCE)``) after the test.

Without pytest (benchmarks, scripts)::

    with running_postgres() as server, fresh_database(server, "bench_1") as url:
        ...

:func:`running_postgres` raises :class:`PostgresUnavailableError` (a plain
``RuntimeError``, with a message saying what is missing) when no server can be
started; the fixtures turn that into ``pytest.fail`` (they never skip).

The server is ``initdb`` + ``pg_ctl start`` from ``/usr/lib/postgresql/*/bin``
(apt package ``postgresql``), run as the ``postgres`` user through
``runuser`` when we are root (postgres refuses root). Its data directory, log
and unix socket live in a fresh directory under the system temp dir, owned by
``postgres``; it listens on 127.0.0.1 only, on a free port, with ``fsync``,
``synchronous_commit`` and ``full_page_writes`` off, trust authentication.
With ``synchronous_commit`` off an immediate restart loses the last commits the
server acknowledged: a test that restarts it mid-run connects with
``options=-c synchronous_commit=on`` (``test_ms_group_pg.durable``).
It is stopped with ``pg_ctl stop -m immediate`` (then SIGKILL by PID if that
fails) and its directory removed, even when a test fails.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest
import sqlalchemy as sa

from tests.integration.libvirtd import free_port

__all__ = [
    "PostgresServer",
    "PostgresUnavailableError",
    "find_pg_bin",
    "fresh_database",
    "postgres_db",
    "postgres_server",
    "running_postgres",
    "start_postgres",
    "stop_postgres",
]

_USER = "postgres"
_START_TIMEOUT = 20.0
_STOP_TIMEOUT = 10.0


class PostgresUnavailableError(RuntimeError):
    """No throwaway PostgreSQL can be started here (binaries missing, initdb or start failed)."""


@attrs.frozen
class PostgresServer:
    """A running throwaway PostgreSQL.

    Attributes:
        url: ``postgresql+psycopg://postgres@127.0.0.1:PORT/postgres``.
        port: its TCP port on 127.0.0.1.
        pid: the postmaster's PID.
        root: its directory (data dir ``root/data``, log ``root/postgres.log``).
    """

    url: str
    port: int
    pid: int
    root: Path

    def database_url(self, name: str) -> str:
        """The URL of database ``name`` on this server."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"


def find_pg_bin() -> Path:
    """The newest ``/usr/lib/postgresql/<version>/bin`` with ``pg_ctl``.

    Raises :class:`PostgresUnavailableError` when there is none.
    """
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if not candidates:
        raise PostgresUnavailableError(
            "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin: "
            "`apt-get install -y --no-install-recommends postgresql`"
        )
    return candidates[-1].parent


def _as_postgres(argv: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return argv
    runuser = shutil.which("runuser")
    if runuser is None:
        raise PostgresUnavailableError("runuser (util-linux) is needed to run PostgreSQL as root")
    return [runuser, "-u", _USER, "--", *argv]


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"


def _run(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _as_postgres(argv),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd="/",
    )


def _postmaster_pid(data: Path) -> int | None:
    try:
        first = (data / "postmaster.pid").read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    return int(first) if first.strip().isdigit() else None


def _accepts(url: str) -> bool:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool, connect_args={"connect_timeout": 2})
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        return True
    except sa.exc.OperationalError:
        return False
    finally:
        engine.dispose()


def _stop(bin_dir: Path, root: Path) -> None:
    """Stop the server in ``root`` (pg_ctl immediate, then SIGKILL) and remove ``root``."""
    data = root / "data"
    pid = _postmaster_pid(data)
    if pid is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            _run(
                [str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                _STOP_TIMEOUT,
            )
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 0)  # still there: pg_ctl failed or timed out
            os.kill(pid, signal.SIGKILL)
    shutil.rmtree(root, ignore_errors=True)


def start_postgres() -> PostgresServer:
    """initdb + start a server; stop it with :func:`stop_postgres`.

    Raises :class:`PostgresUnavailableError` when that is impossible.
    """
    bin_dir = find_pg_bin()
    as_root = os.geteuid() == 0
    last_error = ""
    for _attempt in range(3):  # the free port may be taken between probing and binding
        root = Path(tempfile.mkdtemp(prefix="cloudha-pg-"))
        if as_root:
            entry = pwd.getpwnam(_USER)
            os.chown(root, entry.pw_uid, entry.pw_gid)
        os.chmod(root, 0o700)  # initdb creates data/ inside with 0700
        data, log = root / "data", root / "postgres.log"
        try:
            init = _run(
                [
                    str(bin_dir / "initdb"),
                    "-D",
                    str(data),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--no-sync",
                    "--no-instructions",
                ],
                60.0,
            )
            if init.returncode != 0:
                raise PostgresUnavailableError(f"initdb failed:\n{init.stdout}\n{init.stderr}")
            port = free_port()
            options = (
                f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
            )
            started = _run(
                [
                    str(bin_dir / "pg_ctl"),
                    "-D",
                    str(data),
                    "-l",
                    str(log),
                    "-o",
                    options,
                    "-t",
                    str(int(_START_TIMEOUT)),
                    "-w",
                    "start",
                ],
                _START_TIMEOUT + 5,
            )
            url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
            pid = _postmaster_pid(data)
            if started.returncode == 0 and pid is not None:
                deadline = time.monotonic() + _START_TIMEOUT
                while time.monotonic() < deadline and not _accepts(url):
                    time.sleep(0.05)
                if _accepts(url):
                    return PostgresServer(url=url, port=port, pid=pid, root=root)
                last_error = f"postgres did not accept on {url} within {_START_TIMEOUT} s"
            else:
                last_error = f"pg_ctl start failed:\n{started.stdout}\n{started.stderr}"
        except BaseException:
            _stop(bin_dir, root)
            raise
        last_error += f"\n--- {log} ---\n{_tail(log)}"
        _stop(bin_dir, root)
    raise PostgresUnavailableError(f"could not start PostgreSQL: {last_error}")


def stop_postgres(server: PostgresServer) -> None:
    """Stop a server from :func:`start_postgres` and remove its directory."""
    _stop(find_pg_bin(), server.root)


@contextlib.contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """A throwaway server for the ``with`` block (loopback, trust auth, no fsync).

    Raises :class:`PostgresUnavailableError` when it cannot be started; the
    server is stopped and its directory removed on exit, even on an exception.
    """
    server = start_postgres()
    try:
        yield server
    finally:
        stop_postgres(server)


@contextlib.contextmanager
def fresh_database(server: PostgresServer, name: str) -> Iterator[str]:
    """The URL of a new empty database ``name`` on ``server``; dropped ``WITH (FORCE)`` on exit."""
    admin = sa.create_engine(server.url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        try:
            yield server.database_url(name)
        finally:
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server shared by the session (loopback, trust auth, no fsync)."""
    try:
        server = start_postgres()
    except PostgresUnavailableError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server
    finally:
        stop_postgres(server)


_db_numbers = itertools.count(1)


@pytest.fixture
def postgres_db(postgres_server: PostgresServer) -> Iterator[str]:
    """The URL of a fresh empty database on the session server, dropped after the test."""
    with fresh_database(postgres_server, f"test_{os.getpid()}_{next(_db_numbers)}") as url:
        yield url
