"""Shipyard: tabular models from data to production on Ray."""

__version__ = "0.1.0"
