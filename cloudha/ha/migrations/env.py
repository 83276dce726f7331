"""Alembic environment for cloudha's tables.

Run through :func:`cloudha.ha.store.upgrade`, which passes an open connection
in ``config.attributes["connection"]``. Online mode only; no logging setup.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from cloudha.ha.store import metadata

connection = context.config.attributes.get("connection")
if not isinstance(connection, Connection):
    raise RuntimeError(
        "cloudha migrations run through cloudha.ha.store.upgrade(engine), "
        "which passes the connection"
    )
context.configure(connection=connection, target_metadata=metadata)
with context.begin_transaction():
    context.run_migrations()
