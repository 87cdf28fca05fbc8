"""`python -m worker.cli`: the same as `crmhook`."""

from worker.cli import main

main()
