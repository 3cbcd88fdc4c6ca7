"""Reads compiled to SQL by the ORM once per shape, then only executed.

The checker reads the rate-limit counts on every batch, hundreds of times a
second, holding the GIL that the event loop needs. Building and compiling the
queryset is most of that read's cost, on SQLite and PostgreSQL alike (far more
than the query itself: docs/performance.md). A :class:`CompiledRead` lets the ORM write the SQL once per shape
(the number of values in an ``IN`` list, say), then runs it with new parameters
and passes the rows through the ORM's own converters, so the values come back
exactly as the queryset would return them.

The parameters are stated by the read (``params``), and the first compilation
of each shape checks them against the ORM's own, so a Django upgrade that
ordered them differently fails loudly instead of reading the wrong rows.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Iterator
from typing import Any, Generic, TypeVar, cast

from django.db import connections
from django.db.models import Model, QuerySet
from django.db.models.sql.compiler import SQLCompiler

V = TypeVar("V")


class CompiledRead(Generic[V]):
    """A read of ``model``: ``build(values)`` is its queryset; ``params(values,
    connection)`` the queryset's parameters, in the ORM's order and adapted as
    the ORM adapts them; ``shape(values)`` what decides the SQL text."""

    def __init__(
        self,
        model: type[Model],
        build: Callable[[V], QuerySet[Any, Any]],
        params: Callable[[V, Any], list[Any]],
        shape: Callable[[V], Hashable],
    ) -> None:
        self._model = model
        self._build = build
        self._params = params
        self._shape = shape
        # Per thread: a compiler belongs to the connection it was compiled for,
        # and each thread has its own connection.
        self._local = threading.local()

    def rows(self, values: V) -> Iterator[tuple[Any, ...]]:
        connection = connections[self._model._default_manager.db]
        compiled: dict[Hashable, tuple[str, SQLCompiler]] = self._local.__dict__.setdefault("compiled", {})
        shape = (connection.alias, self._shape(values))
        entry = compiled.get(shape)
        if entry is None:
            entry = compiled[shape] = self._compile(values, connection)
        sql, compiler = entry
        with connection.cursor() as cursor:
            cursor.execute(sql, self._params(values, connection))
            fetched = cursor.fetchall()
        return cast(Iterator[tuple[Any, ...]], compiler.results_iter(results=[fetched], tuple_expected=True))

    def _compile(self, values: V, connection: Any) -> tuple[str, SQLCompiler]:
        compiler = self._build(values).query.get_compiler(connection=connection)
        sql, orm_params = compiler.as_sql()
        if list(orm_params) != self._params(values, connection):
            raise AssertionError(f"Compiled read {sql!r}: its stated parameters differ from the ORM's")
        return sql, compiler
