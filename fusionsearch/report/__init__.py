"""Reporting, after the search: held-out evaluation, metrics, cost, figures, pages, terminal summaries.

No Ray: the driver runs :func:`fusionsearch.report.evaluation.predict_fold` as Ray tasks.
"""
