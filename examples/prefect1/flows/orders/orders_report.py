"""Orders report: a Prefect 1 flow of three tasks. Its query lives in queries/, its formatting
in report_lib.py; both are stored with it. Built in the team's runtime image (the FlowStorage's
spec.build.image), where prefect is installed: the operator itself has no prefect."""

from pathlib import Path

from prefect import Flow, Parameter, task
from report_lib import format_rows, sample_orders

# Read when the flow is loaded (built): the pickled flow carries the text.
QUERY = (Path(__file__).parent / "queries" / "top_customers.sql").read_text()


@task
def extract(limit: int) -> list[tuple[str, float]]:
    return sample_orders().execute(QUERY, {"limit": limit}).fetchall()


@task
def transform(rows: list[tuple[str, float]]) -> list[str]:
    return format_rows(rows)


@task(log_stdout=True)
def publish(lines: list[str]) -> int:
    for line in lines:
        print(line)
    return len(lines)


with Flow("orders report") as flow:
    limit = Parameter("limit", default=3)
    published = publish(transform(extract(limit)))
