"""A read-only SQL tool over a SQLite file: the model may query it, never change it or reach another file.

    sql = sql_tool("town.db")
    ToolBox([sql]).run({"name": "sql", "arguments": {"query": "SELECT name FROM people WHERE job = 'baker'"}})
        -> {"role": "tool", "name": "sql", "content": "name\\nAna\\n(1 row)"}

Read-only three times over: the file is opened through SQLite's `mode=ro` URI; an authorizer allows only reading
(SELECT, reading columns, functions, recursive CTEs) and denies everything else (writes, schema changes, ATTACH,
PRAGMA, transactions); and `PRAGMA query_only` is on. A progress handler stops a query that runs past `timeout_s`
(a runaway recursive CTE, a huge cross join), and at most `max_rows` rows come back. Errors come back as text.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

_READS = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE}


def _authorize(action, *_):
    return sqlite3.SQLITE_OK if action in _READS else sqlite3.SQLITE_DENY


def sql_tool(path: str | Path, timeout_s: float = 2.0, max_rows: int = 50) -> Callable[[str], str]:
    """A tool function `sql(query)` over the SQLite database at path (which must exist)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no SQLite database at {path}")
    uri = f"{path.resolve().as_uri()}?mode=ro"

    def sql(query: str) -> str:
        """Run one read-only SQL query (SQLite) on the database and return the rows.

        Args:
            query: a SELECT statement
        """
        con = sqlite3.connect(uri, uri=True, check_same_thread=False)
        try:
            con.execute("PRAGMA query_only = ON")
            con.set_authorizer(_authorize)
            deadline = time.monotonic() + timeout_s
            con.set_progress_handler(lambda: time.monotonic() > deadline, 10_000)  # non-zero: abort the query
            cur = con.execute(query)
            rows = cur.fetchmany(max_rows + 1)
            names = [d[0] for d in cur.description or []]
        except sqlite3.Error as e:
            if "interrupted" in str(e):
                return f"error: the query ran longer than {timeout_s:g} s"
            return f"error: {e}"
        finally:
            con.close()
        more = len(rows) > max_rows
        lines = [" | ".join(names)] + [" | ".join("NULL" if v is None else str(v) for v in r) for r in rows[:max_rows]]
        count = f"(first {max_rows} rows)" if more else f"({len(rows)} row{'' if len(rows) == 1 else 's'})"
        return "\n".join(lines + [count])

    return sql
