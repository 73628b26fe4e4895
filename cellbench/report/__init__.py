"""The HTML report of a benchmark run: one self-contained file built from stored results only.

    build_report(run_dir)                           -> run_dir/report.html
    build_comparison_report(run_dir, ["a", "b"])    -> run_dir/compare-a-b.html

The report reads ``results.json`` and ``artifacts/`` of a run folder (docs/run-folder.md) and never
recomputes a metric; figures are rendered with matplotlib (Agg) and embedded as PNG data URIs; the
page has inline CSS, one hashed inline script and a Content-Security-Policy that forbids any
network request. Sections are described in docs/report.md.
"""

from __future__ import annotations

from .build import build_comparison_report, build_report, comparison_filename, markdown_report, render

__all__ = ["build_report", "build_comparison_report", "comparison_filename", "markdown_report", "render"]
