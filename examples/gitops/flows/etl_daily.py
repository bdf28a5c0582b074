"""A daily ETL flow, kept in git. flowstore pickles the object named `flow`."""

from flowstore.flow import Flow


def extract() -> list[int]:
    return [3, 1, 4, 1, 5, 9, 2, 6]


def run_etl() -> dict[str, int]:
    rows = extract()
    return {"rows": len(rows), "total": sum(rows)}


flow = Flow("etl daily", run_etl)
