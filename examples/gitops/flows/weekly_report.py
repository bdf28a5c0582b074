"""A report flow stored as a script (storedAsScript): kept byte for byte, never executed by the
operator; agents run it to get the flow object."""

from flowstore.flow import Flow


def build_report() -> str:
    return "weekly report: all green"


report = Flow("weekly report", build_report)
