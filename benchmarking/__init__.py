"""Orchestrated experiments: every backend and server side by side on one machine, with the floors it measures."""
