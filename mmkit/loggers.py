"""Kept so that configs and run directories naming ``mmkit.cli.loggers.CSVLogger`` keep working;
the logger lives in :mod:`mmkit.cli.loggers`."""

from .cli.loggers import CSVLogger

__all__ = ["CSVLogger"]
