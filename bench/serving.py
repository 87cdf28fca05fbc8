"""What the benchmark's gunicorn serves: the web app, plus two reference views that put its
ingest figure in proportion, on the same server, worker class and process count.

- `POST /bench/parse-only`: the cheapest safe handling of an Outbound Message (defusedxml
  with DTDs forbidden, the notifications iterated) and the Ack: the ceiling that no view
  which also queues the work can pass.
- `POST /bench/naive`: the same parse, then one `apply_async` per notification, as a
  hand-rolled script would: reported for reference, not targeted.

Never part of the Procfile: these views queue unchecked work and exist only in a benchmark.
"""

from __future__ import annotations

import os
from wsgiref.types import WSGIApplication

from defusedxml import ElementTree
from flask import Blueprint, Flask, Response, request

from webhooks.app import create_app as create_flask_app
from webhooks.auth import verify_token
from webhooks.extension import edge
from webhooks.serving import BodyDeadline, body_timeout
from webhooks.soap import ACK, CONTENT_TYPE, OUTBOUND, SOBJECT
from worker.domain.operations import Action, Operation
from worker.tasks.publish import PERFORM_TASK

NOTIFICATION = f"{{{OUTBOUND}}}Notification"
NOTIFICATION_ID = f"{{{OUTBOUND}}}Id"
SOBJECT_ID = f"{{{SOBJECT}}}Id"

baselines = Blueprint("bench", __name__, url_prefix="/bench")


def _notifications() -> list[tuple[str, str]]:
    """(notification Id, Event Id) of each notification: the token check and the parse both
    views share."""
    verify_token(request.args.get("token"), edge().settings.webhook_tokens)
    root = ElementTree.fromstring(request.get_data(), forbid_dtd=True)
    found = []
    for notification in root.iter(NOTIFICATION):
        event_id = notification.findtext(f"{{{OUTBOUND}}}sObject/{SOBJECT_ID}", "")
        found.append((notification.findtext(NOTIFICATION_ID, ""), event_id))
    return found


@baselines.post("/parse-only")
def parse_only() -> Response:
    _notifications()
    return Response(ACK, content_type=CONTENT_TYPE)


@baselines.post("/naive")
def naive() -> Response:
    celery = edge().celery
    for notification_id, event_id in _notifications():
        operation = Operation(Action.CANCEL, event_id, notification_id)
        celery.send_task(PERFORM_TASK, args=[operation.to_message()])
    return Response(ACK, content_type=CONTENT_TYPE)


def with_baselines(app: Flask) -> Flask:
    app.register_blueprint(baselines)
    return app


def create_app() -> WSGIApplication:
    """`bench.serving:create_app()`, in place of `webhooks.serving:create_app()` on the
    Procfile's `web` line: the same app under the same body deadline, with the two views."""
    return BodyDeadline(with_baselines(create_flask_app()), body_timeout(os.environ))
