"""Rollout reports: the model (`build_report`) and its JSON, CSV and HTML renderers.

Entry points: `render` (REST API and CLI), `write_reports` (the demo), `cmd_report` and
`add_arguments` in `orchestrator.cli.report`, `report_response` in
`orchestrator.reports.http`. docs/reports.md describes the fields and definitions.
"""

from orchestrator.reports.model import RolloutReport, build_report
from orchestrator.reports.render import (
    CONTENT_TYPES,
    FORMATS,
    ReportFormatError,
    render,
    report_filename,
    write_reports,
)

__all__ = [
    "CONTENT_TYPES",
    "FORMATS",
    "ReportFormatError",
    "RolloutReport",
    "build_report",
    "render",
    "report_filename",
    "write_reports",
]
