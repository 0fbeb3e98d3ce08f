"""Which store failures are the database's (retry) and which are the event's (dead-letter).

The ingester retries a batch only while the database is unreachable or a concurrent
writer got to a row first; anything else is a property of the events themselves and
retrying would stall the partition forever, so those events go to the dead-letter topic.

- transient: ``OperationalError`` (connection refused, server gone, SQLite locked or a
  missing table before migration), ``InterfaceError``, ``DisconnectionError``, a pool
  ``TimeoutError``, ``ProgrammingError`` (the schema is missing or behind: fixed by a
  migration, never by the event) and a unique violation (another ingester stored the
  same event_id or request_id first; the retry skips it as a duplicate).
- permanent: everything else: ``DataError`` (value out of range, too long, bad text),
  other ``IntegrityError`` s, ``StatementError`` s raised while binding parameters,
  and plain Python errors from the driver (``OverflowError``, ``ValueError``,
  ``UnicodeError``, ``TypeError``).
"""

from __future__ import annotations

from sqlalchemy import exc

_TRANSIENT = (exc.OperationalError, exc.InterfaceError, exc.DisconnectionError,
              exc.TimeoutError, exc.ProgrammingError)


def is_transient(error: BaseException) -> bool:
    """True when retrying the same write later can succeed; False when the events are bad."""
    if isinstance(error, _TRANSIENT):
        return True
    return isinstance(error, exc.IntegrityError) and is_unique_violation(error)


def is_unique_violation(error: exc.IntegrityError) -> bool:
    """A duplicate key: PostgreSQL's SQLSTATE 23505, SQLite's "UNIQUE constraint failed"."""
    orig = error.orig
    return (getattr(orig, "pgcode", None) == "23505"
            or getattr(orig, "sqlstate", None) == "23505"
            or "UNIQUE constraint failed" in str(orig))


def describe(error: BaseException) -> str:
    """A one-line reason for the dead-letter header: the error class and the DB message."""
    orig = getattr(error, "orig", None) or error
    message = " ".join(str(orig).split())[:500]
    return f"store: {type(orig).__name__}: {message}"
