"""Alembic migrations of the service database; run them with ``obstacle.service.db.migrate``."""
