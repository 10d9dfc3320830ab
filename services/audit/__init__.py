"""The audit service: twice a year, each institution's deleted results and their chain impact.

    reader.py      rod.results.v1, rod.deliveries.v1, rod.extracts.v1 → the projection (consume →
                   decode → apply in one transaction → commit the group's offsets)
    projection.py  its own tables (audit_*), rows keyed by what they are, inserted if absent
    chain_check.py the hash chain checked in position order as events arrive; a break is an alert
    periods.py     YYYY-05 / YYYY-11, bounded at midnight Europe/Amsterdam
    figures.py     report arithmetic (pure): totals, reasons, months, chain impact, rates, medians
    render.py      CSV, JSON and HTML bodies (templates/, svg.py), byte-identical for the same events
    reports.py     facts from the verified projection → files → ReportPublished on rod.reports.v1
    scheduler.py   each closed period published once; never an open one
    service.py     the reader and scheduler as one component of `rod up`
    cli.py         `rod report --period YYYY-MM [--institution CODE]`
    http.py        GET /v1/reports and /v1/reports/{period}, mounted in the registrar's API
"""
