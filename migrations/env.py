"""Alembic environment: migrations of the region database (schema ``dispatcher``)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

from dispatcher.migrate import VERSION_TABLE, sqlalchemy_url

config = context.config
url = config.attributes.get("database_url") or config.get_main_option("sqlalchemy.url")
if not url:
    from dispatcher.config import Settings
    from dispatcher.database import database_url

    url = database_url(Settings.from_env())


def run_migrations_offline() -> None:
    context.configure(url=sqlalchemy_url(url), version_table=VERSION_TABLE, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = create_engine(sqlalchemy_url(url), poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, version_table=VERSION_TABLE)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
