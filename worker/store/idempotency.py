"""The record of a JSON caller's `Idempotency-Key`: claimed while its request is handled,
then the first answer, kept so that a retry gets that answer again instead of a new effect.

It follows the IETF httpapi draft "The Idempotency-Key HTTP Header Field": the key is scoped
to the caller (the draft's composite key of the client's key and "client specific attributes
known only to the resource server"), bound to a fingerprint of the request's body (reused with
another body: 422), answered again once completed, and refused with 409 while the first
request is still being handled.

A record is written only once the request's events are in the broker: before the publish the
key is only *claimed*, for `IN_FLIGHT_SECONDS`, and the claim is given back when the broker
refuses (the caller's retry goes through). If the process dies between the publish and the
record, the claim runs out and the retry publishes again: the fan-out dedupes the second copy
on its seen markers, which are keyed by the scoped source ID (`records.first_sightings`), so
the effect is queued once.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from dataclasses import dataclass
from typing import Any

import redis

from worker.errors import IdempotencyKeyInUse, IdempotencyKeyReused, QueueUnavailable
from worker.store import keys

# Longer than any request takes (a publish gives up within ~20 s, see `tasks.app`), so a 409
# means the first request really is still at work; short, so a crash costs a retry a minute.
IN_FLIGHT_SECONDS = 60
API_SENDER = "api"
# The HMAC key of the scope fingerprint: a label, not a secret (see `scope`).
_SCOPE_LABEL = b"crmhook idempotency scope v1"
_SCOPE_CHARS = 16
_KEY_CHARS = 32

# KEYS: record. ARGV: claim, ttl s. Nil when claimed now, else what holds the key.
_CLAIM = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then return false end
return redis.call('GET', KEYS[1])
"""
# KEYS: record. ARGV: our claim, the answer, ttl s. Over our own claim, or over nothing when
# it ran out before we finished (nobody else claimed since), never over another's.
_SETTLE = """
local held = redis.call('GET', KEYS[1])
if held and held ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
return 1
"""
# KEYS: record. ARGV: our claim. Deleted only while it is still ours.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def scope(token: str) -> str:
    """The caller's scope: a short fingerprint of the webhook token it authenticated with,
    so that two callers' equal keys never meet.

    Safe to store: it is an HMAC-SHA-256, one-way, of a random secret of at least 16
    characters (`MIN_SECRET_LENGTH`), so it gives back nothing of the token, and recovering
    the token from it costs a search of the token's whole space. It authenticates nobody
    (`verify_token` compares the token itself). Keyed with a fixed label, it is not the plain
    SHA-256 that another system may keep of the same secret. 64 bits tell the few configured
    tokens apart with no practical chance of a collision.
    """
    digest = hmac.new(_SCOPE_LABEL, token.encode(), hashlib.sha256).hexdigest()
    return digest[:_SCOPE_CHARS]


def source_id(token: str, idempotency_key: str) -> str:
    """The source of the operations of a request under `idempotency_key`:
    `api:<scope>:<key digest>`, 53 characters whatever the key (it is stored in records,
    seen markers and `get` operation keys), and free of braces and colons from the caller."""
    digest = hashlib.sha256(idempotency_key.encode()).hexdigest()[:_KEY_CHARS]
    return f"{API_SENDER}:{scope(token)}:{digest}"


def fingerprint(document: Any) -> str:
    """The SHA-256 of the body's canonical JSON (sorted keys, no spaces, ASCII escapes).

    The parsed document, not the raw bytes: a client that builds its body again for a retry
    (another key order, other spacing, `\\u00e9` for `é`) sends the same request, and what we
    act on is the parsed document. Every field counts, ignored ones too: anything else
    changed under the same key is a different request. Raises RecursionError for a document
    nested too deeply to write out."""
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class Answer:
    """What the first request answered: replayed as it was."""

    status: int
    body: str


@dataclass(frozen=True)
class Claim:
    """This request's hold on a key while it publishes."""

    key: str
    fingerprint: str
    value: str


class Idempotency:
    """Claim, settle and release the records of `Idempotency-Key`s, one Redis key each."""

    def __init__(self, client: redis.Redis, retention_seconds: int) -> None:
        self._retention_seconds = retention_seconds
        self._claim = client.register_script(_CLAIM)
        self._settle = client.register_script(_SETTLE)
        self._release = client.register_script(_RELEASE)

    def begin(self, source: str, body_fingerprint: str) -> Claim | Answer:
        """Claim the key of `source` for this request, or the first request's Answer.

        Raises IdempotencyKeyReused (422) when the key went with another body, before or
        now, and IdempotencyKeyInUse (409) while its first request is still being handled.
        """
        key = keys.idempotency(source)
        claim = Claim(
            key,
            body_fingerprint,
            _dump(state="in_flight", fingerprint=body_fingerprint, owner=uuid.uuid4().hex),
        )
        try:
            held = self._claim(keys=[key], args=[claim.value, IN_FLIGHT_SECONDS])
        except redis.RedisError as exc:
            raise QueueUnavailable(f"Redis did not answer: {exc}") from exc
        if held is None:
            return claim
        record = json.loads(held)
        if not isinstance(record, dict):  # a previous release's "1": a key already used
            raise IdempotencyKeyReused(
                "this Idempotency-Key was used before; use a new key for a new request"
            )
        if record["fingerprint"] != body_fingerprint:
            raise IdempotencyKeyReused(
                "this Idempotency-Key was used with another body; use a new key for a new request"
            )
        if record["state"] == "in_flight":
            raise IdempotencyKeyInUse(
                "a request with this Idempotency-Key is still being handled; retry later"
            )
        return Answer(int(record["status"]), str(record["body"]))

    def settle(self, claim: Claim, answer: Answer) -> bool:
        """Record `answer` in place of `claim` for the retention; False when another
        request claimed the key after ours ran out (its record will stand)."""
        value = _dump(
            state="done", fingerprint=claim.fingerprint, status=answer.status, body=answer.body
        )
        return bool(
            self._settle(keys=[claim.key], args=[claim.value, value, self._retention_seconds])
        )

    def release(self, claim: Claim) -> None:
        """Give `claim` back, if it is still ours: the request was not accepted after all."""
        self._release(keys=[claim.key], args=[claim.value])


def _dump(**fields: Any) -> str:
    return json.dumps(fields, separators=(",", ":"))
