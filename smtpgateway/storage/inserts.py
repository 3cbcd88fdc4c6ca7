"""INSERT many rows at once, for the committer's hot paths.

Django's ``bulk_create`` builds a model instance per row and compiles its SQL on
every call: for the few rows a batch holds, that cost several times the
database's own work. So the rows go in with
one ``executemany``, or on PostgreSQL with one ``COPY``: Django's cursor sends
each row of an ``executemany`` as its own statement with the values inlined,
which PostgreSQL parses and plans row by row; ``COPY`` streams the rows through psycopg's
adapters with no statement per row. The table and columns come from the model,
so the statement cannot drift from it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from django.db import connections
from django.db.models import Model

if TYPE_CHECKING:
    from django.db.models import Field

    AnyField = Field[Any, Any]


def insert_rows(model: type[Model], objects: Iterable[Any], value: Callable[[AnyField, Any, Any], Any]) -> None:
    """INSERT one row per object; ``value(field, object, connection)`` gives each
    column's value, ready for the driver. The primary key is left to the database."""
    connection = connections[model._default_manager.db]
    fields, sql = _insert_statement(model, connection.vendor)
    rows = [[value(field, obj, connection) for field in fields] for obj in objects]
    if not rows:
        return
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # psycopg's own COPY object: wrapped, so a failure is a Django
            # DatabaseError (IntegrityError included) like any other.
            with connection.wrap_database_errors, cursor.cursor.copy(sql) as copy:
                for row in rows:
                    copy.write_row(row)
        else:
            cursor.executemany(sql, rows)


@functools.cache
def _insert_statement(model: type[Model], vendor: str) -> tuple[list[AnyField], str]:
    """The columns and the statement, built once per model (not on every batch)."""
    quote = connections[model._default_manager.db].ops.quote_name
    fields = [field for field in model._meta.concrete_fields if not field.primary_key]
    table, columns = quote(model._meta.db_table), ", ".join(quote(field.column) for field in fields)
    if vendor == "postgresql":
        return fields, f"COPY {table} ({columns}) FROM STDIN"
    return fields, f"INSERT INTO {table} ({columns}) VALUES ({', '.join(['%s'] * len(fields))})"


def prepared_value(field: AnyField, instance: Model, connection: Any) -> Any:
    """What Django's own INSERT would send for ``field`` of ``instance``
    (``auto_now_add`` and defaults applied, JSON and binary adapted)."""
    return field.get_db_prep_save(field.pre_save(instance, True), connection)


def adapting_only(*names: str) -> Callable[[AnyField, Model, Any], Any]:
    """A value function that prepares only the named fields as :func:`prepared_value`
    does and takes the others as they are: preparing a plain string or integer
    changes nothing, and, called per field per row, cost as much as the INSERT."""
    adapted = frozenset(names)

    def value(field: AnyField, instance: Model, connection: Any) -> Any:
        if field.name in adapted:
            return prepared_value(field, instance, connection)
        return getattr(instance, field.attname)

    return value
