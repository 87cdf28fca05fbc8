"""The idempotency store in Redis: operation records and their claims, indexes, the retry
schedule, dead letters, the quarantine and the audit trail. Every key is built in `keys`."""
