"""`POST /salesforce/outbound/<action>`: Salesforce Outbound Messages (SOAP 1.1).

Ack only once every valid notification is in the broker; quarantine the invalid ones and
still ack, since Salesforce would otherwise retry for 24 hours a message that cannot succeed.
"""

from __future__ import annotations

import logging

from flask import Blueprint, Response, request

from webhooks.auth import verify_org, verify_token
from webhooks.body import read_body
from webhooks.errors import answer_in_soap
from webhooks.extension import edge
from webhooks.soap import ACK, CONTENT_TYPE, parse_outbound
from worker.domain.notifications import triage
from worker.domain.operations import parse_action
from worker.errors import MalformedRequest
from worker.ingest import Batch
from worker.tasks.publish import submit

log = logging.getLogger(__name__)
blueprint = Blueprint("outbound", __name__)
answer_in_soap(blueprint)
ROUTE = "/salesforce/outbound/<action>"


@blueprint.post(ROUTE)
def receive(action: str) -> Response:
    current = edge()
    settings = current.settings
    verify_token(request.args.get("token"), settings.webhook_tokens)
    try:
        chosen = parse_action(action)
    except ValueError as exc:
        raise MalformedRequest(str(exc)) from None
    message = parse_outbound(read_body(), settings.salesforce_event_id_field)
    verify_org(message.organization_id, settings.salesforce_org_ids)

    result = triage(
        message.notifications,
        chosen,
        settings.salesforce_id_prefixes,
        settings.salesforce_event_id_field,
    )
    operations = result.operations  # a property that filters the verdicts: read it once
    with current.metrics.enqueue_seconds.time():
        submit(
            current.celery,
            Batch(message.organization_id, operations, result.rejections, action=chosen),
            current.ingests,
        )
    current.metrics.notifications.labels(chosen.value, "queued").inc(len(operations))
    current.metrics.notifications.labels(chosen.value, "rejected").inc(len(result.rejections))
    for rejection in result.rejections:
        log.warning(
            "quarantined notification %s (%s): %s",
            rejection.notification_id,
            chosen.value,
            rejection.reason,
        )
    log.info(
        "outbound %s from %s: %d queued, %d quarantined",
        chosen.value,
        message.organization_id[:15],
        len(operations),
        len(result.rejections),
    )
    return Response(ACK, status=200, content_type=CONTENT_TYPE)
