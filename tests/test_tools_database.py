"""alignlab.tools.database.sql_tool: queries answer, and nothing a query says can change the database, reach another
file or run for long."""

from __future__ import annotations

import sqlite3

import pytest

from alignlab.tools import ToolBox
from alignlab.tools.database import sql_tool


@pytest.fixture
def town(tmp_path):
    path = tmp_path / "town.db"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE people (name TEXT, job TEXT, pet TEXT)")
    con.executemany("INSERT INTO people VALUES (?, ?, ?)",
                    [("Ana", "baker", "cat"), ("Ben", "guard", None), ("Cal", "fisher", "dog")])
    con.commit()
    con.close()
    return path


def rows(path):
    with sqlite3.connect(path) as con:
        return con.execute("SELECT * FROM people ORDER BY name").fetchall()


def test_queries_answer(town):
    sql = sql_tool(town)
    assert sql("SELECT name FROM people WHERE job = 'baker'") == "name\nAna\n(1 row)"
    assert sql("SELECT name, pet FROM people ORDER BY name") == "name | pet\nAna | cat\nBen | NULL\nCal | dog\n(3 rows)"
    assert sql_tool(town, max_rows=2)("SELECT name FROM people") == "name\nAna\nBen\n(first 2 rows)"
    box = ToolBox([sql])
    assert box.tools[0]["function"]["name"] == "sql"
    assert box.run({"name": "sql", "arguments": {"query": "SELECT count(*) AS n FROM people"}})["content"] == (
        "n\n3\n(1 row)")


@pytest.mark.parametrize("query", [
    "INSERT INTO people VALUES ('Eve', 'thief', 'rat')",
    "UPDATE people SET job = 'thief'",
    "DELETE FROM people",
    "DROP TABLE people",
    "CREATE TABLE loot (x)",
    "ATTACH DATABASE 'other.db' AS other",
    "PRAGMA query_only = OFF",
    "SELECT 1; DELETE FROM people",
])
def test_nothing_changes(town, tmp_path, query):
    before = rows(town)
    out = sql_tool(town)(query)
    assert out.startswith("error: "), out
    assert rows(town) == before and not (tmp_path / "other.db").exists()


def test_runaway_query_is_stopped(town):
    endless = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT count(*) FROM n"
    assert sql_tool(town, timeout_s=0.3)(endless) == "error: the query ran longer than 0.3 s"


def test_missing_database(tmp_path):
    with pytest.raises(FileNotFoundError, match="no SQLite database"):
        sql_tool(tmp_path / "nope.db")
