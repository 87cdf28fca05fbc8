"""`crmhook`, the operator's command line."""

from worker.cli import valves  # noqa: F401 (registers the safety valves' commands)
from worker.cli.commands import main

__all__ = ["main"]
