"""Reports: plots (PNG), the report of one run, the comparison of runs."""
from .compare import compare_runs
from .runreport import write_report

__all__ = ["compare_runs", "write_report"]
