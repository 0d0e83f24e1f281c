"""The migrations build exactly the tables of the models, on SQLite and on PostgreSQL."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from obstacle.platform.db import create_db_engine, migrate
from obstacle.platform.models import Base


def test_the_migrated_schema_matches_the_models(database_url: str) -> None:
    engine = create_db_engine(database_url)
    try:
        migrate(engine)  # at head already: a no-op, and safe to repeat
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
            assert context.get_current_revision() == "0002"
            assert set(inspect(connection).get_table_names()) >= set(Base.metadata.tables)
    finally:
        engine.dispose()


def test_migrations_ship_inside_the_package() -> None:
    from importlib import resources

    versions = resources.files("obstacle.platform") / "migrations" / "versions"
    assert any(p.name.startswith("0001") for p in versions.iterdir())
    assert (resources.files("obstacle.platform") / "migrations" / "env.py").is_file()
