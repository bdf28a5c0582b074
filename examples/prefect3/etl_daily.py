"""A Prefect 3 flow that flowstore stores as a script and Prefect workers pull (docs/prefect.md)."""

from prefect import flow, get_run_logger, task


@task
def extract() -> list[int]:
    return [3, 1, 4, 1, 5, 9, 2, 6]


@flow(name="etl-daily")
def etl_daily() -> dict[str, int]:
    rows = extract()
    result = {"rows": len(rows), "total": sum(rows)}
    get_run_logger().info("etl daily: %s", result)
    return result
