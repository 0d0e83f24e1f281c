"""Alembic environment: runs on the connection that ``obstacle.platform.db.migrate`` hands over.

There is no alembic.ini: the configuration is built in code, so the migrations ship inside the
package and run wherever the package is installed.
"""

from __future__ import annotations

from alembic import context

from obstacle.platform.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("Run the migrations with obstacle.platform.db.migrate(engine).")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=True,  # SQLite alters tables by copying them
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
