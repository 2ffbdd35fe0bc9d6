"""A report over multi-stage work spaces: the paper's results table, the threshold sweep plot and an
image gallery (`python -m wavecam.report --help`; docs/report.md).

    results  reading and checking a work space's results/*.json into a `Run`
    tables   summary and per-class rows, results.md / results.csv, the threshold sweep plot
    gallery  gallery.html and its pictures, the only part that reads images, CAMs and labels
    cli      `report()`, which writes all of it, and the command line
"""

from wavecam.report.cli import main, report
from wavecam.report.gallery import pick, write_gallery
from wavecam.report.results import Run, load_run, load_runs, result_problems
from wavecam.report.tables import fg_precision_recall, markdown, per_class_rows, plot_sweeps, summary_row

__all__ = ["Run", "fg_precision_recall", "load_run", "load_runs", "main", "markdown", "per_class_rows", "pick",
           "plot_sweeps", "report", "result_problems", "summary_row", "write_gallery"]
