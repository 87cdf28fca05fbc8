"""The rules of the trade, as pure functions: Salesforce IDs, operations and their identity,
triage of notifications, the retry policy. No Redis, no Celery, no HTTP: tests call them as is."""
