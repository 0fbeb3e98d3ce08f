"""Alembic environment: runs online against the engine FeedbackStore passes in.

Run by hand with ``alembic -x url=sqlite:///feedback.db upgrade head`` from this folder's
parent too (``script_location`` is this folder).
"""

from alembic import context
from sqlalchemy import create_engine

from feedback.store.models import Base

config = context.config
target_metadata = Base.metadata


def _engine():
    engine = config.attributes.get("engine")
    if engine is None:
        engine = create_engine(context.get_x_argument(as_dictionary=True)["url"])
    return engine


def run_migrations_online() -> None:
    with _engine().connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata,
                          render_as_batch=connection.dialect.name == "sqlite")
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()


run_migrations_online()
