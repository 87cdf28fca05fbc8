"""The HTTP edge: Salesforce Outbound Messages and JSON events in, Celery tasks out.

Thin by design: authenticate, parse, validate, hand over to the worker package. gunicorn
serves `webhooks:create_app()`.
"""

from webhooks.app import create_app

__all__ = ["create_app"]
