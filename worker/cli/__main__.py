"""`python -m worker.cli`: the same as `crmhook`."""

from worker.cli.commands import main

main()
