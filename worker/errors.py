"""Every error this service raises, in one tree.

    CrmhookError
    ├── ConfigError                  a setting is missing or malformed (names the variable)
    ├── IngressError                 a request the edge refuses; carries its HTTP status
    │   ├── Unauthorized             401: no or unknown shared secret
    │   │   ├── MissingToken         401: no credentials at all
    │   │   └── UnknownToken         401: credentials we do not know
    │   ├── Forbidden                403: Organization ID not on the allow-list
    │   │   └── InsufficientScope    403: an admin token whose scope does not allow this
    │   ├── NotFound                 404: nothing recorded under that key or ID
    │   ├── PayloadTooLarge          413: body over the configured bound
    │   ├── IdempotencyKeyInUse      409: the first request under this Idempotency-Key is at work
    │   ├── IdempotencyKeyReused     422: an Idempotency-Key already used with another body
    │   ├── IrreversiblePaused       409: held operations cannot be released during a pause
    │   └── MalformedRequest         400: not XML, hostile XML, not an Outbound Message, bad JSON
    ├── InvalidSalesforceId          an ID that is not one, or not one we accept (also ValueError)
    ├── QueueUnavailable             Redis or the broker did not take the work: answer 503
    ├── ClaimError                   this execution may not act on the operation now
    │   ├── ClaimBusy                another execution holds a live claim: come back after it
    │   ├── ClaimLost                the lease ran out or was taken over: send nothing
    │   ├── NotDurable               the claim could not be made durable in time: send nothing
    │   └── WorkerStopping           this worker is shutting down: nothing new leaves it
    └── GatewayError                 a ChiliPiper call did not succeed
        ├── RetryableError           transient: connect errors, 429, 502/503/504, session expiry
        ├── PermanentError           will not succeed by retrying: 400/401/403/404...
        │   ├── RequestRefused       a JSON-RPC request refused as invalid: nothing ran
        │   ├── CredentialsRefused   our credentials were refused (token, client secret)
        │   │   └── MissingPermission  403: the token lacks a permission (named)
        │   ├── UnknownAccount       Scalekit has no connected account for the identifier
        │   ├── UnknownTool          ChiliPiper knows no tool by that name (list them again)
        │   ├── ToolsMissing         ChiliPiper lists no tool for an action: cannot work
        │   └── ToolError            the tool ran and said no ("already cancelled"...)
        │       └── NoMeetingError   no ChiliPiper meeting is linked to the CRM event
        ├── InDoubtError             an irreversible call may have happened without an answer
        └── DeferredError            not sent: rate limit, shared pause or open circuit
            └── Held                 not sent: held for an operator (their pause, the guard)

Whether to retry is a property of the type, decided once where a third-party error is
translated (`raise … from exc`), never re-derived by callers from messages or status codes.
"""

from __future__ import annotations


class CrmhookError(Exception):
    """Base of every error raised on purpose by this service."""


class ConfigError(CrmhookError):
    """A setting is missing or malformed; the message names the environment variable."""


class IngressError(CrmhookError):
    """A request the edge refuses; `status` is the HTTP status to answer with."""

    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Unauthorized(IngressError):
    status = 401


class MissingToken(Unauthorized):
    """No credentials were presented (RFC 6750: answer without an error code)."""


class UnknownToken(Unauthorized):
    """Credentials were presented but match none we know (RFC 6750: `invalid_token`)."""


class Forbidden(IngressError):
    status = 403


class InsufficientScope(Forbidden):
    """A known admin token asking for more than its scope allows; `scope` is what it needed."""

    def __init__(self, message: str, *, scope: str) -> None:
        super().__init__(message)
        self.scope = scope


class NotFound(IngressError):
    status = 404


class PayloadTooLarge(IngressError):
    status = 413


class IdempotencyKeyInUse(IngressError):
    """The first request under this `Idempotency-Key` is still being handled: retry the same
    request later, unchanged (the IETF draft's 409)."""

    status = 409


class IdempotencyKeyReused(IngressError):
    """This `Idempotency-Key` went with another body: a new request needs a new key (the
    IETF draft's 422)."""

    status = 422


class IrreversiblePaused(IngressError):
    """Held operations cannot be released while every irreversible call is paused: they
    would only be held again. Resume first (which sends what the pause held)."""

    status = 409


class MalformedRequest(IngressError):
    status = 400


class InvalidSalesforceId(CrmhookError, ValueError):
    """An ID that fails the Salesforce rules or the configured key prefixes."""

    def __init__(self, message: str, *, value: str) -> None:
        super().__init__(message)
        self.value = value


class QueueUnavailable(CrmhookError):
    """The broker or the store is unreachable: nothing was acknowledged, the sender retries."""


class ClaimError(CrmhookError):
    """This execution may not act on the operation now; nothing was sent because of it."""


class ClaimBusy(ClaimError):
    """Another execution holds a live claim (a redelivered copy, a duplicate message): this
    one comes back once that claim's lease has run out, `retry_after` seconds from now."""

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ClaimLost(ClaimError):
    """The lease ran out by this execution's own clock, or another execution took the
    operation over: an irreversible call must not leave."""


class NotDurable(ClaimError):
    """No replica confirmed the claim in time: a failover could forget it, so the call that
    depends on it must not leave yet."""


class WorkerStopping(ClaimError):
    """This worker was told to stop (SIGTERM): calls already sent finish, but no new
    irreversible call leaves; the operation goes back to the queue, unacknowledged, for
    another worker."""


class GatewayError(CrmhookError):
    """A call to ChiliPiper failed. `tool` and `status` say which call and how, when known."""

    def __init__(self, message: str, *, tool: str = "", status: int | None = None) -> None:
        super().__init__(message)
        self.tool = tool
        self.status = status


class RetryableError(GatewayError):
    """Transient: the same call may succeed later. `retry_after` is the server's hint, seconds."""

    def __init__(
        self,
        message: str,
        *,
        tool: str = "",
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, tool=tool, status=status)
        self.retry_after = retry_after


class PermanentError(GatewayError):
    """Retrying cannot help: bad credentials, no such meeting, a tool that said no."""


class RequestRefused(PermanentError):
    """The MCP server refused the request itself (invalid JSON-RPC, unknown method, bad
    params): nothing ran, so an irreversible call that meets it is not in doubt."""


class CredentialsRefused(PermanentError):
    """ChiliPiper or Scalekit refused our credentials: fix the settings, retrying cannot."""


class MissingPermission(CredentialsRefused):
    """HTTP 403: the token works but lacks `permission` (when ChiliPiper named it)."""

    def __init__(
        self, message: str, *, tool: str = "", status: int | None = 403, permission: str = ""
    ) -> None:
        super().__init__(message, tool=tool, status=status)
        self.permission = permission


class UnknownAccount(PermanentError):
    """Scalekit knows no connected account for SCALEKIT_IDENTIFIER on this connection."""


class UnknownTool(PermanentError):
    """ChiliPiper knows no tool by that name: nothing ran. The names are listed again."""


class ToolsMissing(PermanentError):
    """ChiliPiper's listing has no tool for an action (`missing` says which): the worker
    cannot do its work, and says so at start-up rather than dead-lettering every call."""

    def __init__(self, message: str, *, missing: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.missing = missing


class ToolError(PermanentError):
    """The tool ran and refused (`isError: true`): no meeting linked, already cancelled..."""


class NoMeetingError(ToolError):
    """No meeting is linked to the event: nothing to check, nothing to retry."""


class DeferredError(GatewayError):
    """Not sent: the shared rate limit, a pause ordered by a 429, or an open circuit holds
    calls back for `retry_after` seconds. Costs no attempt; the task is re-scheduled."""

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Held(DeferredError):
    """Not sent: the safety valves hold this irreversible operation until an operator acts.
    `reason` is `paused` (every irreversible call is paused: `crmhook resume`) or `guard`
    (more were due in a minute than IRREVERSIBLE_GUARD_PER_MINUTE: `crmhook release-held`
    or `crmhook drop-held`)."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message, retry_after=0.0)
        self.reason = reason


class InDoubtError(GatewayError):
    """The request may have reached ChiliPiper and taken effect, but no answer came back.

    Calling an irreversible tool again could repeat its effect (a second email to a customer),
    so the caller must find out what happened (`crm-get`) before trying again.
    """
