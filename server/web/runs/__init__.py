"""Runs: the runs list, the run page (log viewer), its live stream, input answers."""
