"""Reporting results: statistics with intervals, plots, token maps and layer traces, benchmark tables."""
