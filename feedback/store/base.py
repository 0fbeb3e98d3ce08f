"""What every table module of the store shares: the declarative base and the key type.

``models`` (feedback) and ``labeling_models`` (the workbench) both build on these, so
neither needs the other; ``models`` imports ``labeling_models`` so that ``Base.metadata``
holds every table Alembic manages.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Integer
from sqlalchemy.orm import DeclarativeBase

# SQLite only autoincrements INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit sequence.
SeqType = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    pass
