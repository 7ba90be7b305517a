"""The report: markdown + self-contained HTML with plots, written from finished run directories."""

from .build import write_report
from .study import study_table

__all__ = ["study_table", "write_report"]
