"""Alembic migrations of the service database; run them with ``obstacle.platform.db.migrate``."""
