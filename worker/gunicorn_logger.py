"""gunicorn's logger with `LOG_FORMAT`'s formatter: the Procfile's `web` runs gunicorn with
`--logger-class worker.gunicorn_logger.Logger`, so that its error and access lines, and the
app's own, come out as one JSON object per line (or as text).

It lives in `worker`, not `webhooks`, because gunicorn's master imports it before any worker
forks and before gevent patches the standard library: importing `webhooks` would load the whole
app (Celery, redis, ssl) unpatched. This module imports only logging.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from gunicorn import glogging

from worker import logs


class Logger(glogging.Logger):  # type: ignore[misc]  # gunicorn is untyped
    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        root = logging.getLogger()
        if not root.handlers:  # the app's own lines (webhooks.*, worker.*), on stderr
            root.addHandler(logging.StreamHandler(sys.stderr))
            root.setLevel(logging.INFO)
        logs.use_format(logs.configured_format(), (self.error_log, self.access_log))
