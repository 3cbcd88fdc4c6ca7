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
    fields, _ = _insert_statement(model, connection.vendor)
    _write(model, [[value(field, obj, connection) for field in fields] for obj in objects])


def insert_alike(model: type[Model], varying: tuple[str, ...], values: Iterable[tuple[Any, ...]]) -> None:
    """INSERT one row per tuple of ``values``: the row of a new ``model()`` (its
    defaults, prepared once per process as Django's INSERT would send them) with
    the ``varying`` fields set from the tuple, in that order. The varying values
    go to the driver as they are: strings, integers, or what
    ``connection.ops`` has adapted. For rows that differ in a few fields (a
    message's recipients): a model instance and the preparation of its fields per
    row cost more than the INSERT."""
    connection = connections[model._default_manager.db]
    template, positions = _default_row(model, connection.alias, varying)
    row = template.copy()
    rows = []
    for given in values:
        for position, value in zip(positions, given, strict=True):
            row[position] = value
        rows.append(row.copy())
    _write(model, rows)


@functools.cache
def _default_row(model: type[Model], alias: str, varying: tuple[str, ...]) -> tuple[list[Any], list[int]]:
    """A new instance's prepared row, and where the ``varying`` fields are in it.
    The caller copies the row it fills (each thread its own copy per call)."""
    connection = connections[alias]
    fields, _ = _insert_statement(model, connection.vendor)
    for field in fields:
        # Kept for the process: a value made per row would be made only once.
        made_per_row = getattr(field, "auto_now", False) or getattr(field, "auto_now_add", False)
        per_row = made_per_row or (field.has_default() and callable(field.default))
        if per_row and field.name not in varying:
            raise ValueError(f"{model.__name__}.{field.name} takes a new value per row: name it in varying")
    template = model()
    row = [None if field.name in varying else prepared_value(field, template, connection) for field in fields]
    return row, [next(n for n, field in enumerate(fields) if field.name == name) for name in varying]


def _write(model: type[Model], rows: list[list[Any]]) -> None:
    if not rows:
        return
    connection = connections[model._default_manager.db]
    _, sql = _insert_statement(model, connection.vendor)
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            # psycopg's own COPY object: wrapped, so a failure is a Django
            # DatabaseError (IntegrityError included) like any other.
            with connection.wrap_database_errors, cursor.cursor.copy(sql) as copy:
                for row in rows:
                    copy.write_row(row)
    else:
        execute(connection, sql, rows, many=True)


def placeholder(vendor: str) -> str:
    """The parameter marker of a statement that :func:`execute` runs."""
    return "?" if vendor == "sqlite" else "%s"


def execute(connection: Any, sql: str, params: list[Any], many: bool = False) -> None:
    """Run one of the committer's own statements (written with
    :func:`placeholder`) in the caller's transaction. On SQLite on the driver's
    connection: Django's cursor, made per call, and its rewriting of ``%s`` to
    ``?`` cost as much as inserting a batch's few rows. Wrapped, so a failure is
    a Django DatabaseError (IntegrityError included) like any other."""
    if connection.vendor == "sqlite":
        connection.ensure_connection()
        with connection.wrap_database_errors:
            (connection.connection.executemany if many else connection.connection.execute)(sql, params)
        return
    with connection.cursor() as cursor:
        (cursor.executemany if many else cursor.execute)(sql, params)


@functools.cache
def _insert_statement(model: type[Model], vendor: str) -> tuple[list[AnyField], str]:
    """The columns and the statement, built once per model (not on every batch)."""
    quote = connections[model._default_manager.db].ops.quote_name
    fields = [field for field in model._meta.concrete_fields if not field.primary_key]
    table, columns = quote(model._meta.db_table), ", ".join(quote(field.column) for field in fields)
    if vendor == "postgresql":
        return fields, f"COPY {table} ({columns}) FROM STDIN"
    return fields, f"INSERT INTO {table} ({columns}) VALUES ({', '.join([placeholder(vendor)] * len(fields))})"


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
