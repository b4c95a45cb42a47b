"""``Dialect``: what the SQL of the two SQL stores differs in, and nothing more.

The statements both stores run are written once (``sql.py``, ``sql_writer.py``,
``trigger_states.py``) with ``?`` for a parameter and ``?json`` for a JSON parameter;
``Dialect.sql`` renders them. SQLite takes ``?`` and a JSON value as text; psycopg takes
``%s``, and PostgreSQL needs a JSON text parameter cast to ``json``. SQLite keeps times as
RFC 3339 text (fixed width, so they sort as text), PostgreSQL as ``timestamptz``: ``stamp``
and ``time`` convert them on the way in and out. Everything else of the shared SQL (upserts
with ``ON CONFLICT``, ``RETURNING``, partial indexes) reads the same in both.
"""

from __future__ import annotations

import functools

import attrs

from runtime.store.schema import Stamp, Time


@attrs.frozen
class Dialect:
    name: str
    mark: str  # a parameter
    json_mark: str  # a JSON parameter (its value is ``wire.dumps`` text)
    stamp: Stamp  # a datetime as a parameter
    time: Time  # a time column's value as a datetime
    step_status: str  # the ``status`` of a ``steps.state`` JSON value, as SQL
    # a statement holding a lock on one text key until the transaction ends (None: one writer at a time already)
    lock_key: str | None = None

    def sql(self, template: str) -> str:
        """``template`` (written with ``?`` and ``?json``) in this dialect."""
        return _render(template, self.mark, self.json_mark)


def marks(count: int) -> str:
    """``count`` parameters, comma-separated (an ``IN (...)`` list of a template)."""
    return ", ".join("?" * count)


@functools.lru_cache(maxsize=256)
def _render(template: str, mark: str, json_mark: str) -> str:
    return template.replace("?json", json_mark).replace("?", mark)
