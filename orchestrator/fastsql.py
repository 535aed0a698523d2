"""Plain-SQL forms of the few ORM calls on the engine's hot path (claim, finish, advance).

Every stage transition runs a handful of statements; through the ORM each costs 0.25–0.45 ms
of CPU to build (query compilation, model instantiation) against ~0.03 ms for the round trip
itself, and on 2 cores that CPU is what bounds throughput (benchmarks/ENGINE_RESULTS.md). The
helpers here are generic — table, columns and value conversion come from the model's
metadata and each field's get_db_prep_save, as the ORM would send them — so a model change
needs no edit here. They send no signals (no model on this path has receivers) and fill no
`auto_now` fields (none is used on this path).
"""

from __future__ import annotations

from functools import lru_cache

from django.db import connection


def _qn(name: str) -> str:
    return connection.ops.quote_name(name)


@lru_cache(maxsize=512)
def _fields(model, names: tuple[str, ...]) -> tuple:
    return tuple(model._meta.get_field(name) for name in names)


@lru_cache(maxsize=512)
def _update_sql(model, values: tuple[str, ...], where: tuple[str, ...]) -> str:
    table = _qn(model._meta.db_table)
    sets = ", ".join(f"{_qn(f.column)} = %s" for f in _fields(model, values))
    conds = " AND ".join(f"{_qn(f.column)} = %s" for f in _fields(model, where))
    return f"UPDATE {table} SET {sets} WHERE {conds}"  # noqa: S608


def update(obj, fields) -> int:
    """`obj.save(update_fields=fields)` for an existing row: one UPDATE by primary key."""
    names = tuple(fields)
    model = type(obj)
    pk = model._meta.pk.name
    params = [
        f.get_db_prep_save(getattr(obj, f.attname), connection) for f in _fields(model, names)
    ]
    params.append(obj.pk)
    with connection.cursor() as cursor:
        cursor.execute(_update_sql(model, names, (pk,)), params)
        return cursor.rowcount


def update_where(model, values: dict, where: dict) -> int:
    """`model.objects.filter(**where).update(**values)` with equality conditions only."""
    set_names, where_names = tuple(values), tuple(where)
    params = [f.get_db_prep_save(values[f.name], connection) for f in _fields(model, set_names)] + [
        f.get_db_prep_value(where[f.name], connection) for f in _fields(model, where_names)
    ]
    with connection.cursor() as cursor:
        cursor.execute(_update_sql(model, set_names, where_names), params)
        return cursor.rowcount


@lru_cache(maxsize=64)
def _insert_sql(model) -> tuple[str, tuple]:
    fields = tuple(f for f in model._meta.concrete_fields if not f.primary_key)
    columns = ", ".join(_qn(f.column) for f in fields)
    marks = ", ".join(["%s"] * len(fields))
    return f"INSERT INTO {_qn(model._meta.db_table)} ({columns}) VALUES ({marks})", fields  # noqa: S608


def insert(obj) -> None:
    """`obj.save(force_insert=True)` without reading the new primary key back."""
    sql, fields = _insert_sql(type(obj))
    params = [f.get_db_prep_save(f.pre_save(obj, True), connection) for f in fields]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


@lru_cache(maxsize=64)
def _reader(model, vendor: str) -> tuple[str, tuple, tuple]:
    """Column list, attribute names and value converters of `model` (what the ORM applies
    to every row it reads: backend converters, then the field's own, e.g. JSON)."""
    fields = tuple(model._meta.concrete_fields)
    table = model._meta.db_table
    columns = ", ".join(f"{_qn(table)}.{_qn(f.column)}" for f in fields)
    converters = []
    for position, field in enumerate(fields):
        col = field.get_col(table)
        convs = connection.ops.get_db_converters(col) + col.get_db_converters(connection)
        if convs:
            converters.append((position, tuple(convs), col))
    return columns, tuple(f.attname for f in fields), tuple(converters)


def select(model, where: str, params, *, order_by: str = "", lock: bool = False) -> list:
    """Rows of `model` (instances, every field loaded, as `Model.from_db` builds them for
    the ORM) matching a SQL condition written with column names; `lock`: FOR UPDATE where
    the database has it."""
    columns, names, converters = _reader(model, connection.vendor)
    sql = f"SELECT {columns} FROM {_qn(model._meta.db_table)} WHERE {where}"  # noqa: S608
    if order_by:
        sql += f" ORDER BY {order_by}"
    if lock and connection.features.has_select_for_update:
        sql += " FOR UPDATE"
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    out = []
    alias = connection.alias
    for row in rows:
        values = list(row)
        for position, convs, col in converters:
            value = values[position]
            for convert in convs:
                value = convert(value, col, connection)
            values[position] = value
        out.append(model.from_db(alias, names, values))
    return out
