"""Helpers of the orders report: a small sample database and the report's formatting."""

import sqlite3

ORDERS = [("acme", 120.0), ("globex", 75.5), ("acme", 30.0), ("initech", 99.9), ("globex", 10.0), ("umbrella", 5.0)]


def sample_orders() -> sqlite3.Connection:
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE orders (customer TEXT, amount REAL)")
    db.executemany("INSERT INTO orders VALUES (?, ?)", ORDERS)
    return db


def format_rows(rows: list[tuple[str, float]]) -> list[str]:
    return [f"{customer:<10} {total:>8.2f}" for customer, total in rows]
