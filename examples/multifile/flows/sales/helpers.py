"""The team's helpers: a sample database and the report's format."""

import sqlite3

SALES = [("north", 120), ("south", 80), ("north", 30), ("east", 45)]


def sample_database() -> sqlite3.Connection:
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE sales (region TEXT, amount INTEGER)")
    db.executemany("INSERT INTO sales VALUES (?, ?)", SALES)
    return db


def as_lines(rows: list[tuple[str, int]]) -> list[str]:
    return [f"{region}: {total}" for region, total in rows]
