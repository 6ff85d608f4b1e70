"""Worked examples shared by the notebooks and ``python -m brainconv``."""
