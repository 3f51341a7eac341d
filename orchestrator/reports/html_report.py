"""The HTML report: one self-contained page (inline CSS and SVG, no script, nothing
fetched), readable on screen and on paper. Every value from the database is HTML-escaped:
appliance names and error messages may hold markup."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import date, datetime

from orchestrator import __version__
from orchestrator.reports import svg
from orchestrator.reports.model import (
    REPORT_VERSION,
    DurationStats,
    Outcomes,
    RolloutReport,
    Span,
    VersionCount,
)
from orchestrator.reports.svg import e

CONTENT_TYPE = "text/html; charset=utf-8"

CSS = """
:root { color-scheme: light; --fg: #1f2328; --muted: #59636e; --line: #d1d9e0;
  --head: #f6f8fa; --ok: #1a7f37; --bad: #cf222e; --warn: #bc4c00; }
* { box-sizing: border-box; }
body { margin: 0; background: #fff; color: var(--fg);
  font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
  sans-serif; }
header, main, footer { max-width: 1080px; margin: 0 auto; padding: 0 24px; }
header { padding-top: 24px; }
h1 { font-size: 1.6em; margin: 0 0 4px; overflow-wrap: anywhere; }
h2 { font-size: 1.25em; margin: 0 0 12px; padding-bottom: 4px;
  border-bottom: 1px solid var(--line); }
h3 { font-size: 1.05em; margin: 16px 0 6px; }
section { margin: 28px 0; }
.muted { color: var(--muted); }
.state { display: inline-block; padding: 1px 10px; border: 2px solid currentColor;
  border-radius: 12px; font-weight: 600; font-size: .85em; letter-spacing: .03em; }
.state.SUCCEEDED { color: var(--ok); } .state.FAILED { color: var(--bad); }
.state.COMPLETED_WITH_FAILURES { color: var(--warn); }
.state.CANCELLED { color: var(--muted); } .state.RUNNING, .state.PAUSED,
.state.WAITING_WINDOW, .state.SCHEDULED, .state.DRAFT { color: #0969da; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(120px, 1fr));
  gap: 10px; margin: 12px 0 18px; padding: 0; list-style: none; }
.cards li { border: 1px solid var(--line); border-radius: 8px; padding: 8px 12px;
  break-inside: avoid; }
.cards .n { display: block; font-size: 1.6em; font-weight: 650;
  font-variant-numeric: tabular-nums; }
.cards .ok .n { color: var(--ok); } .cards .bad .n { color: var(--bad); }
.cards .warn .n { color: var(--warn); }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 4px 16px;
  margin: 0 0 12px; }
dl.facts dt { color: var(--muted); } dl.facts dd { margin: 0; overflow-wrap: anywhere; }
.columns { display: grid; grid-template-columns: repeat(auto-fit, minmax(300px, 1fr));
  gap: 0 24px; }
table { border-collapse: collapse; width: 100%; margin: 6px 0 12px; font-size: .93em;
  font-variant-numeric: tabular-nums; }
td.nowrap { white-space: nowrap; }
th, td { text-align: left; padding: 5px 8px; border-bottom: 1px solid var(--line);
  vertical-align: top; }
th { background: var(--head); font-weight: 600; white-space: nowrap; }
td.num, th.num { text-align: right; }
td.time, td.num { white-space: nowrap; }
.scroll { overflow-x: auto; }
td.zero { color: #aab2bb; }
tbody tr:nth-child(even) td { background: #fbfcfd; }
.chart { width: 100%; height: auto; display: block; }
.chart text { font-size: 12px; fill: var(--fg); }
.chart .tick { fill: var(--muted); }
.chart .axis-label { font-size: 12.5px; fill: var(--fg); }
.chart .grid { stroke: #e6eaef; stroke-width: 1; }
.chart .axis { stroke: #8c959f; stroke-width: 1; }
figure { margin: 0; break-inside: avoid; }
figcaption { color: var(--muted); font-size: .9em; margin-top: 4px; }
.legend { list-style: none; display: flex; flex-wrap: wrap; gap: 4px 18px; padding: 0;
  margin: 4px 0 8px; font-size: .9em; }
.legend li { display: flex; align-items: center; gap: 6px; }
.swatch { width: 28px; height: 10px; } .swatch.dot { width: 10px; }
.failure { border: 1px solid var(--line); border-left: 4px solid var(--bad);
  border-radius: 6px; padding: 8px 12px; margin: 0 0 12px; break-inside: avoid; }
.failure.TIMED_OUT { border-left-color: var(--warn); }
.failure .message { white-space: pre-wrap; overflow-wrap: anywhere; margin: 4px 0;
  font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: .9em; }
.names { display: flex; flex-wrap: wrap; gap: 2px 12px; list-style: none; padding: 0;
  margin: 6px 0 0; font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
  font-size: .88em; }
.names li { overflow-wrap: anywhere; }
code.command { display: inline-block; padding: 4px 8px; border: 1px solid var(--line);
  border-radius: 6px; background: var(--head); font-size: .95em; }
.note { font-size: .85em; margin: 0; }
footer { color: var(--muted); font-size: .85em; padding-bottom: 24px; }
@media print {
  @page { margin: 14mm 12mm; }
  body { font-size: 10.5pt; }
  header, main, footer { max-width: none; padding: 0; }
  * { background: transparent !important; box-shadow: none !important; }
  section { margin: 0; }
  main > section + section { break-before: page; }
  h2, h3 { break-after: avoid; }
  table { break-inside: auto; font-size: 9pt; }
  .scroll { overflow: visible; }
  thead { display: table-header-group; }
  tr, td, th, .cards li, figure, .failure, svg { break-inside: avoid; }
  a { color: inherit; text-decoration: none; }
}
"""


# ------------------------------------------------------------------ formatting
def fmt_time(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value is not None else "\u2014"


def fmt_short_time(value: datetime | None, day: date | None = None) -> str:
    """HH:MM:SS on `day` (the day of the rollout's start), MM-DD HH:MM:SS on another."""
    if value is None:
        return "\u2014"
    return value.strftime("%H:%M:%S" if value.date() == day else "%m-%d %H:%M:%S")


def report_day(report: RolloutReport) -> date:
    start = report.summary.span.started_at or report.rollout.created_at
    return start.date()


def fmt_seconds(value: float | None) -> str:
    """A duration for people: 0.42 s, 12.3 s, 4 min 05 s, 2 h 07 min, 3 d 04 h."""
    if value is None:
        return "\u2014"
    if value < 10:
        return f"{value:.2f} s"
    if value < 60:
        return f"{value:.1f} s"
    whole = round(value)
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    if whole < 86400:
        return f"{whole // 3600} h {whole % 3600 // 60:02d} min"
    return f"{whole // 86400} d {whole % 86400 // 3600:02d} h"


def _num_cell(value: int) -> str:
    return f'<td class="num{" zero" if value == 0 else ""}">{value}</td>'


def _table(headers: Sequence[tuple[str, bool]], rows: Iterable[str]) -> str:
    head = "".join(f'<th{" class=num" if numeric else ""} scope="col">{e(h)}</th>'
                   for h, numeric in headers)
    return (f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>')


_OUTCOME_HEADERS = (("tasks", True), ("succeeded", True), ("failed", True),
                    ("timed out", True), ("skipped", True), ("cancelled", True),
                    ("not finished", True))


def _outcome_cells(o: Outcomes) -> str:
    return "".join(_num_cell(v) for v in (o.targeted, o.succeeded, o.failed, o.timed_out,
                                          o.skipped, o.cancelled, o.pending + o.in_flight))


def _span_cells(span: Span, day: date) -> str:
    return (f'<td class="time">{e(fmt_short_time(span.started_at, day))}</td>'
            f'<td class="time">{e(fmt_short_time(span.finished_at, day))}</td>'
            f'<td class="num">{e(fmt_seconds(span.duration_s))}</td>')


_SPAN_HEADERS = (("start", False), ("end", False), ("duration", True))


def _times_note(day: date) -> str:
    return (f'<p class="muted note">Times are UTC, on {day.isoformat()} unless a date '
            "(month-day) is shown; a group ends when its last task has finished.</p>")


# ------------------------------------------------------------------ sections
def _summary(report: RolloutReport) -> str:
    s = report.summary
    o = s.outcomes
    cards = [
        ("targeted", o.targeted, ""), ("succeeded", o.succeeded, "ok"),
        ("failed", o.failed, "bad" if o.failed else ""),
        ("timed out", o.timed_out, "warn" if o.timed_out else ""),
        ("skipped", o.skipped, ""), ("cancelled", o.cancelled, ""),
    ]
    if o.pending + o.in_flight:
        cards.append(("not finished", o.pending + o.in_flight, ""))
    card_html = "".join(f'<li class="{cls}"><span class="n">{n}</span>{e(label)}</li>'
                        for label, n, cls in cards)
    r = report.rollout
    facts = [
        ("target version", e(r.target_version)),
        ("started", e(fmt_time(s.span.started_at))),
        ("finished", e(fmt_time(s.span.finished_at))),
        ("duration", e(fmt_seconds(s.span.duration_s))),
    ]
    if report.eta is not None:
        facts.append(("forecast completion (ETA)", e(fmt_time(report.eta))))
    if r.abort_reason:
        facts.append(("reason", e(r.abort_reason)))
    if r.pruned_note:
        facts.append(("pruned", e(r.pruned_note)))
    facts.append(("created by", e(r.created_by) + f' <span class="muted">at '
                  f'{e(fmt_time(r.created_at))}</span>'))
    strategy = r.strategy
    facts.append(("waves", e(", ".join(str(w) for w in strategy.get("waves", []))) or "\u2014"))
    facts.append((
        "limits",
        e(f"max_concurrency {strategy.get('max_concurrency', chr(0x2014))}, "
          f"per_site_concurrency {strategy.get('per_site_concurrency') or 'none'}, "
          f"max_failures {strategy.get('max_failures', chr(0x2014))}"),
    ))
    fact_html = "".join(f"<dt>{e(k)}</dt><dd>{v}</dd>" for k, v in facts)

    def versions(title: str, items: Sequence[VersionCount]) -> str:
        rows = [f"<tr><td>{e(v.version) if v.version is not None else _none_version()}</td>"
                f"{_num_cell(v.count)}</tr>" for v in items]
        table = _table([("version", False), ("appliances", True)], rows)
        return f"<div><h3>{e(title)}</h3>{table}</div>"

    if s.windows:
        window_rows = [
            f"<tr><td>{e(w.name)}</td><td><code>{e(w.cron)}</code> {e(w.timezone)}</td>"
            f'<td class="num">{e(fmt_seconds(w.duration_s))}</td>'
            f"<td>{e(', '.join(w.sites) or chr(0x2014))}</td>"
            f"<td>{e(', '.join(w.tags) or chr(0x2014))}</td>{_num_cell(w.appliances)}</tr>"
            for w in s.windows
        ]
        windows = _table([("window", False), ("schedule", False), ("duration", True),
                          ("sites", False), ("tags", False), ("appliances", True)],
                         window_rows)
    elif s.windows_mode == "ignore":
        windows = '<p class="muted">The rollout ignores maintenance windows.</p>'
    else:
        windows = ('<p class="muted">No maintenance window covers the targeted appliances: '
                   "installs were not restricted in time.</p>")
    return (
        f'<section id="summary"><h2>Summary</h2><ul class="cards">{card_html}</ul>'
        f'<dl class="facts">{fact_html}</dl>'
        f'<div class="columns">{versions("Versions before", s.versions_before)}'
        f'{versions("Versions after", s.versions_after)}</div>'
        f"<h3>Maintenance windows</h3>{windows}</section>"
    )


def _none_version() -> str:
    return '<span class="muted">not recorded</span>'


def _progress(report: RolloutReport) -> str:
    t = report.timeline
    caption = "Cumulative finished tasks (any outcome) per wave"
    if t.start is not None and t.points:
        caption += f", in steps of {fmt_seconds(t.bucket_seconds)}"
    return (
        '<section id="progress"><h2>Progress over time</h2><figure>'
        f"{svg.progress_legend(t)}{svg.progress_chart(t)}"
        f"<figcaption>{e(caption)}.</figcaption></figure></section>"
    )


def _waves(report: RolloutReport) -> str:
    day = report_day(report)
    rows = [
        f'<tr><td class="nowrap">{e(svg.wave_label(w.number))}</td><td>{e(w.state)}'
        + (f' <span class="muted">(approved by {e(w.approved_by)})</span>'
           if w.approved_by else "")
        + f"</td>{_outcome_cells(w.outcomes)}{_span_cells(w.span, day)}</tr>"
        for w in report.waves
    ]
    headers = [("wave", False), ("state", False), *_OUTCOME_HEADERS, *_SPAN_HEADERS]
    return (f'<section id="waves"><h2>Waves</h2>{_table(headers, rows)}{_times_note(day)}'
            "</section>")


def _sites(report: RolloutReport) -> str:
    day = report_day(report)
    rows = [f"<tr><td>{e(s.site)}</td>{_outcome_cells(s.outcomes)}{_span_cells(s.span, day)}"
            "</tr>"
            for s in report.sites]
    headers = [("site", False), *_OUTCOME_HEADERS, *_SPAN_HEADERS]
    present = svg.present_outcomes([s.outcomes for s in report.sites])
    return (
        '<section id="sites"><h2>Sites</h2><figure>'
        f"{svg.outcome_legend(present)}{svg.site_bars(report.sites)}"
        "<figcaption>Task outcomes per site.</figcaption></figure>"
        f"{_table(headers, rows)}{_times_note(day)}</section>"
    )


def _durations(report: RolloutReport) -> str:
    d = report.durations

    def row(label: str, what: str, stats: DurationStats) -> str:
        return (f"<tr><td>{e(label)}</td><td class=muted>{e(what)}</td>"
                f"{_num_cell(stats.count)}"
                f'<td class="num">{e(fmt_seconds(stats.p50_s))}</td>'
                f'<td class="num">{e(fmt_seconds(stats.p95_s))}</td>'
                f'<td class="num">{e(fmt_seconds(stats.max_s))}</td></tr>')

    rows = [
        row("install", "accepted by the appliance \u2192 install finished", d.install),
        row("reboot and verification", "install finished \u2192 outcome proven", d.reboot),
        row("whole task", "dispatch \u2192 outcome (executed tasks)", d.task),
    ]
    headers = [("phase", False), ("measured", False), ("samples", True), ("p50", True),
               ("p95", True), ("max", True)]
    return f'<section id="durations"><h2>Durations</h2>{_table(headers, rows)}</section>'


def _names(names: Sequence[str], not_listed: int) -> str:
    items = "".join(f"<li>{e(n)}</li>" for n in names)
    more = (f'<p class="muted">\u2026 and {not_listed} more (the CSV report lists every '
            "appliance)</p>" if not_listed else "")
    return f'<ul class="names">{items}</ul>{more}'


def _failures(report: RolloutReport) -> str:
    if not report.failures:
        body = '<p class="muted">No task failed or timed out.</p>'
    else:
        groups = []
        for f in report.failures:
            outcome = " ".join(f.outcomes)
            code = e(f.error_code) if f.error_code else "no error code"
            groups.append(
                f'<div class="failure {e(outcome)}"><h3>{code} '
                f'<span class="muted">\u2014 {f.count} appliance{"s" if f.count != 1 else ""}'
                f", {e(', '.join(x.lower().replace('_', ' ') for x in f.outcomes))}</span></h3>"
                f'<p class="message">{e(f.message or "(no message)")}</p>'
                f"{_names(f.appliances, f.not_listed)}</div>"
            )
        more = report.failures_not_listed
        if more.groups:
            groups.append(
                f'<p class="muted">\u2026 and {more.groups} more group(s) of '
                f"{more.appliances} appliance(s) in all (the CSV report lists every "
                "appliance with its message)</p>"
            )
        body = "".join(groups)
    return f'<section id="failures"><h2>Failures</h2>{body}</section>'


def _remaining(report: RolloutReport) -> str:
    rem = report.remaining
    parts = []
    if rem.command:
        parts.append(
            f"<p>{rem.retryable} appliance{'s' if rem.retryable != 1 else ''} did not get "
            f"{e(report.rollout.target_version)}. To run them again:</p>"
            f'<p><code class="command">{e(rem.command)}</code></p>'
        )
        for g in rem.groups:
            parts.append(f"<h3>{e(g.outcome.lower().replace('_', ' '))} "
                         f'<span class="muted">({g.count})</span></h3>'
                         f"{_names(g.appliances, g.not_listed)}")
    else:
        parts.append('<p class="muted">Nothing failed, timed out or was cancelled.</p>')
    if rem.not_finished:
        parts.append(f"<p>{rem.not_finished} task(s) have not finished yet (pending or in "
                     "flight).</p>")
    return f'<section id="remaining"><h2>What remains to do</h2>{"".join(parts)}</section>'


def _preflight(report: RolloutReport) -> str:
    pre = report.preflight
    if pre is None:
        body = '<p class="muted">No pre-flight was run.</p>'
    else:
        counts = ", ".join(f"{pre.counts.get(r, 0)} {r}" for r in ("ok", "warn", "fail", "skip"))
        run = pre.run or {}
        when = f" \u2014 last checked {e(fmt_time(pre.checked_at))}" if pre.checked_at else ""
        left = (f"; {run['left_out']} appliance(s) left out of the plan (SKIPPED)"
                if run.get("left_out") else "")
        parts = [f"<p>{e(counts)}{left}{when}</p>"]
        for g in pre.groups:
            parts.append(
                f'<div class="failure"><h3>{e(g.code)} <span class="muted">\u2014 '
                f'{g.count} appliance{"s" if g.count != 1 else ""}, {e(g.result)}</span>'
                f"</h3>{_names(g.appliances, g.not_listed)}</div>")
        body = "".join(parts)
    return f'<section id="preflight"><h2>Pre-flight</h2>{body}</section>'


def render_html(report: RolloutReport) -> str:
    r = report.rollout
    title = f"Rollout {r.id} \u201c{r.name}\u201d: {r.target_version} \u2014 {r.state}"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{e(title)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>Rollout {r.id} \u201c{e(r.name)}\u201d</h1>"
        f'<p><span class="state {e(r.state)}">{e(r.state)}</span> '
        f"{e(r.target_version)} on {report.summary.outcomes.targeted} appliance(s) "
        f'<span class="muted">\u2014 report generated {e(fmt_time(report.generated_at))}'
        "</span></p></header><main>"
        f"{_summary(report)}{_progress(report)}{_waves(report)}{_sites(report)}"
        f"{_durations(report)}{_failures(report)}{_remaining(report)}{_preflight(report)}"
        f"</main><footer>orchestrator {e(__version__)} \u2014 rollout report "
        f"(format {REPORT_VERSION}); the CSV report lists every "
        "appliance.</footer></body></html>\n"
    )
