"""Who may post: shared secrets compared in constant time, Organization IDs on an allow-list.

Both raise instead of returning a bool, so a caller cannot forget to check the answer.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

from pydantic import SecretStr

from worker.domain.salesforce_ids import same_org
from worker.errors import Forbidden, InsufficientScope, MissingToken, UnknownToken
from worker.settings import AdminScope, AdminToken


def verify_token(presented: str | None, tokens: Sequence[SecretStr]) -> int:
    """Accept `presented` if it equals any configured token (several allow rotation), and
    return the index of the one it matched.

    Digests are compared, not the strings, so the comparison takes the same time whatever
    the lengths; every token is compared, so timing does not reveal which one matched.
    """
    if not presented:
        raise MissingToken("missing token")
    offered = hashlib.sha256(presented.encode()).digest()
    matches = [
        hmac.compare_digest(offered, hashlib.sha256(token.get_secret_value().encode()).digest())
        for token in tokens
    ]
    if not any(matches):
        raise UnknownToken("unknown token")
    return matches.index(True)


def verify_admin(header: str | None, tokens: Sequence[AdminToken], scope: AdminScope) -> AdminToken:
    """The admin token in an `Authorization: Bearer` header, if it allows `scope`:
    Unauthorized (401) without one or for an unknown one, Forbidden (403) for one whose
    scope is too narrow."""
    token = tokens[verify_token(bearer(header), [token.secret for token in tokens])]
    if not token.allows(scope):
        raise InsufficientScope(f"token {token.name!r} may {token.scope} only", scope=scope)
    return token


def bearer(header: str | None) -> str | None:
    """The credential of an `Authorization: Bearer <token>` header, if that is its form."""
    if not header:
        return None
    scheme, _, credential = header.strip().partition(" ")
    return credential.strip() or None if scheme.lower() == "bearer" else None


def verify_org(organization_id: str, allowed: Sequence[str]) -> None:
    if not same_org(organization_id, allowed):
        shown = organization_id[:40]
        raise Forbidden(f"Organization ID {shown!r} is not allowed (SALESFORCE_ORG_IDS)")
