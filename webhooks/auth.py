"""Who may post: shared secrets compared in constant time, Organization IDs on an allow-list.

Both raise instead of returning a bool, so a caller cannot forget to check the answer.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

from pydantic import SecretStr

from worker.errors import Forbidden, Unauthorized
from worker.salesforce_ids import same_org


def verify_token(presented: str | None, tokens: Sequence[SecretStr]) -> None:
    """Accept `presented` if it equals any configured token (several allow rotation).

    Digests are compared, not the strings, so the comparison takes the same time whatever
    the lengths; every token is compared, so timing does not reveal which one matched.
    """
    if not presented:
        raise Unauthorized("missing token")
    offered = hashlib.sha256(presented.encode()).digest()
    matches = [
        hmac.compare_digest(offered, hashlib.sha256(token.get_secret_value().encode()).digest())
        for token in tokens
    ]
    if not any(matches):
        raise Unauthorized("unknown token")


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
