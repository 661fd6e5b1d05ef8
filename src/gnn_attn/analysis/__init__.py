"""Turning runs and sweeps into tables and plots."""
