"""The worker: Celery tasks and the core they call (IDs, idempotency store, ChiliPiper gateway).

`celery --app worker worker` finds `worker.app`, built from the environment on first access,
so importing the package for its functions needs no configuration at all.
"""

from __future__ import annotations

import sys
from functools import cache
from typing import Any


@cache
def _app() -> Any:
    from worker import logs
    from worker.errors import ConfigError
    from worker.settings import load_settings
    from worker.tasks.app import make_celery

    try:
        settings = load_settings().require_worker()
    except ConfigError as exc:
        print(f"crmhook worker: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    # Before Celery's own set-up, which keeps a handler it finds: the lines of start-up
    # (tool discovery, Python's warnings) come out in LOG_FORMAT too.
    logs.configure(settings.log_format, capture_warnings=True)
    if settings.log_format == "json":
        logs.route_celery_notices()
    return make_celery(settings)


def __getattr__(name: str) -> Any:
    if name == "app":
        return _app()
    raise AttributeError(f"module 'worker' has no attribute {name!r}")
