"""Background tasks that follow a log (the provision indexer, the code checker): the log's newest id, and
their single-row cursor tables (one row, id 1) saying how far they have got."""

from typing import Any

from sqlalchemy import ColumnElement, Connection, Table, func, select


def newest_id(conn: Connection, log: Table) -> int:
    """The log's highest id, 0 when it is empty."""
    return int(conn.execute(select(func.coalesce(func.max(log.c.id), 0))).scalar() or 0)


def cursor_query(cursor: Table, column: str) -> "ColumnElement[Any]":
    """The cursor as a scalar subquery, 0 before its first move (to read it inside a larger statement)."""
    return func.coalesce(select(cursor.c[column]).where(cursor.c.id == 1).scalar_subquery(), 0)


def read_cursor(conn: Connection, cursor: Table, column: str) -> int:
    """The cursor's value, 0 before its first move."""
    return int(conn.execute(select(cursor.c[column]).where(cursor.c.id == 1)).scalar() or 0)


def move_cursor(conn: Connection, cursor: Table, column: str, value: int) -> None:
    """Sets the cursor, creating its row on the first move."""
    if not conn.execute(cursor.update().where(cursor.c.id == 1).values({column: value})).rowcount:
        conn.execute(cursor.insert().values({"id": 1, column: value}))
