"""`report.html`: one self-contained page per run directory that a person opens to see what happened.

    <run>/report.html    written by `transferkit train` at the end, and again by `transferkit report RUN_DIR`
    <compare>/report.html  a comparison: the advice, the table linked to each run's report, four charts

No network and no scripts: the plots are inline SVG (matplotlib), the reliability diagram an inline PNG,
the styles in one <style> block. Every headline number carries `data-key` (its path in summary.json) and
`data-value` (the raw value), so a test — or a person's script — can hold the page against summary.json.
"""

from .comparison import budget_sentence, write_comparison_report
from .render import render_report, write_report

__all__ = ["budget_sentence", "render_report", "write_comparison_report", "write_report"]
