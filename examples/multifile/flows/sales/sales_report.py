"""Daily sales report: the flow. Its helpers (helpers.py) and its query (queries/daily_sales.sql)
live beside it and are stored with it, as one bundle."""

from pathlib import Path

from flowstore.flow import Flow
from helpers import as_lines, sample_database

# Read when the flow is loaded: a pickled flow carries the text, a bundle carries the file.
QUERY = (Path(__file__).parent / "queries" / "daily_sales.sql").read_text()


def report() -> list[str]:
    rows = sample_database().execute(QUERY).fetchall()
    return as_lines(rows)


flow = Flow("sales report", report)
