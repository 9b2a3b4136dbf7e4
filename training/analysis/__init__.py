"""Experiments and analysis: run plots, predictions on photos, checkpoint comparison, filters, sweeps, reports."""
