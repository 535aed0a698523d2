"""Plain-SQL forms of the few ORM calls on the engine's hot path (trigger, finish, advance).

Every stage transition runs a handful of statements; through the ORM each costs 0.25–0.45 ms
of CPU to build (query compilation, model instantiation) against ~0.03 ms for the round trip
itself, and on 2 cores that CPU is what bounds throughput (benchmarks/ENGINE_RESULTS.md). The
helpers here are generic — table, columns and value conversion come from the model's
metadata and each field's get_db_prep_save / the ORM's row converters, as the ORM would do
it — so a model change needs no edit here (tests/orchestrator/test_fastsql.py compares them
with the ORM). They send no signals (no model on this path has receivers) and fill no
`auto_now` fields (none is used on this path).

Two details keep them cheap: they work on the connection object itself, not through
`django.db.connection` (a proxy that looks the connection up on every attribute access),
and INSERTs carry at most 50 parameters each, the most psycopg caches the parsed form of.
"""

from __future__ import annotations

from functools import lru_cache

from django.db import DEFAULT_DB_ALIAS, connections

MAX_CACHED_PARAMS = 50  # psycopg._queries.MAX_CACHED_STATEMENT_PARAMS


def _conn():
    return connections[DEFAULT_DB_ALIAS]


def _qn(name: str) -> str:
    return _conn().ops.quote_name(name)


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
    conn = _conn()
    names = tuple(fields)
    model = type(obj)
    params = [f.get_db_prep_save(getattr(obj, f.attname), conn) for f in _fields(model, names)]
    params.append(obj.pk)
    with conn.cursor() as cursor:
        cursor.execute(_update_sql(model, names, (model._meta.pk.name,)), params)
        return cursor.rowcount


def update_where(model, values: dict, where: dict) -> int:
    """`model.objects.filter(**where).update(**values)` with equality conditions only."""
    conn = _conn()
    set_names, where_names = tuple(values), tuple(where)
    params = [f.get_db_prep_save(values[f.name], conn) for f in _fields(model, set_names)]
    params += [f.get_db_prep_value(where[f.name], conn) for f in _fields(model, where_names)]
    with conn.cursor() as cursor:
        cursor.execute(_update_sql(model, set_names, where_names), params)
        return cursor.rowcount


@lru_cache(maxsize=128)
def _insert_sql(model, rows: int, returning: bool) -> tuple[str, tuple]:
    fields = tuple(f for f in model._meta.concrete_fields if not f.primary_key)
    columns = ", ".join(_qn(f.column) for f in fields)
    row = "(" + ", ".join(["%s"] * len(fields)) + ")"
    sql = f"INSERT INTO {_qn(model._meta.db_table)} ({columns}) VALUES "  # noqa: S608
    sql += ", ".join([row] * rows)
    if returning:
        sql += f" RETURNING {_qn(model._meta.pk.column)}"
    return sql, fields


def insert_many(objs: list, *, return_ids: bool = True) -> None:
    """`Model.objects.bulk_create(objs)`: multi-row INSERTs of at most MAX_CACHED_PARAMS
    parameters each when two statements hold them all, else one; with `return_ids`, the new
    primary keys are set on the objects (RETURNING: PostgreSQL, SQLite ≥ 3.35)."""
    if not objs:
        return
    conn = _conn()
    model = type(objs[0])
    returning = return_ids and conn.features.can_return_rows_from_bulk_insert
    width = len(_insert_sql(model, 1, False)[1])
    per_statement = max(1, MAX_CACHED_PARAMS // width)
    if len(objs) > 2 * per_statement:
        # More than two round trips cost more than parsing one big statement.
        per_statement = len(objs)
    with conn.cursor() as cursor:
        for start in range(0, len(objs), per_statement):
            chunk = objs[start : start + per_statement]
            sql, fields = _insert_sql(model, len(chunk), returning)
            params = [
                f.get_db_prep_save(f.pre_save(obj, True), conn) for obj in chunk for f in fields
            ]
            cursor.execute(sql, params)
            if returning:
                for obj, (pk,) in zip(chunk, cursor.fetchall(), strict=True):
                    obj.pk = pk
    for obj in objs:
        obj._state.adding, obj._state.db = False, conn.alias


def insert(obj) -> None:
    """`obj.save(force_insert=True)` without reading the new primary key back."""
    insert_many([obj], return_ids=False)


@lru_cache(maxsize=64)
def _reader(model, alias: str) -> tuple[str, tuple, tuple]:
    """Column list, attribute names and value converters of `model` (what the ORM applies
    to every row it reads: backend converters, then the field's own, e.g. JSON)."""
    conn = connections[alias]
    fields = tuple(model._meta.concrete_fields)
    table = model._meta.db_table
    columns = ", ".join(f"{_qn(table)}.{_qn(f.column)}" for f in fields)
    converters = []
    for position, field in enumerate(fields):
        col = field.get_col(table)
        convs = conn.ops.get_db_converters(col) + col.get_db_converters(conn)
        if convs:
            converters.append((position, tuple(convs), col))
    return columns, tuple(f.attname for f in fields), tuple(converters)


def select(model, where: str, params, *, order_by: str = "", lock: bool = False) -> list:
    """Rows of `model` (instances, every field loaded, as `Model.from_db` builds them for
    the ORM) matching a SQL condition written with column names; `lock`: FOR UPDATE where
    the database has it."""
    conn = _conn()
    columns, names, converters = _reader(model, conn.alias)
    sql = f"SELECT {columns} FROM {_qn(model._meta.db_table)} WHERE {where}"  # noqa: S608
    if order_by:
        sql += f" ORDER BY {order_by}"
    if lock and conn.features.has_select_for_update:
        sql += " FOR UPDATE"
    with conn.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    out = []
    for row in rows:
        values = list(row)
        for position, convs, col in converters:
            value = values[position]
            for convert in convs:
                value = convert(value, col, conn)
            values[position] = value
        out.append(model.from_db(conn.alias, names, values))
    return out
