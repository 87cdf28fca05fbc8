"""Salesforce record IDs: 15→18 conversion, checksum validation and repair, key-prefix checks.

Every key, log line and stored record uses the canonical 18-character form produced here.
"""

from __future__ import annotations

import string
from collections.abc import Iterable

from worker.errors import InvalidSalesforceId

_CHECKSUM_ALPHABET = string.ascii_uppercase + "012345"
# Each character of an ID as its checksum bit: "1" for an upper-case letter, else "0". Two
# IDs per notification pass through here, so the bits come from C (translate, int), not a
# Python loop over characters.
_UPPER_BIT = str.maketrans(
    string.ascii_uppercase + string.ascii_lowercase + string.digits, "1" * 26 + "0" * 36
)


def id_shaped(value: str) -> bool:
    """Whether `value` has the shape of a Salesforce ID: 15 or 18 ASCII letters and digits.

    String methods rather than a regular expression: every notification asks this of each
    of its fields and IDs, and a regex match costs several times as much.
    """
    return len(value) in (15, 18) and value.isascii() and value.isalnum()


def checksum(id15: str) -> str:
    """The 3-character suffix that makes a 15-character ID case-insensitively unique.

    Each 5-character chunk becomes a 5-bit number whose bit i says "character i is an
    upper-case letter"; the number indexes A-Z then 0-5. `id15` is 15 letters and digits.
    """
    bits = id15.translate(_UPPER_BIT)  # character i's bit, read right to left per chunk
    return (
        _CHECKSUM_ALPHABET[int(bits[4::-1], 2)]
        + _CHECKSUM_ALPHABET[int(bits[9:4:-1], 2)]
        + _CHECKSUM_ALPHABET[int(bits[14:9:-1], 2)]
    )


def canonical_id(raw: str) -> str:
    """The 18-character form of `raw`, or `InvalidSalesforceId` saying what is wrong.

    A 15-character ID gains its checksum. An 18-character ID must carry the checksum of its
    first 15 characters. Two kinds of damage in transit are repaired, since the checksum
    records exactly which letters were upper-case: all letters upper- or lower-cased (a
    spreadsheet or a case-insensitive system did it), and the suffix alone lower-cased (the
    suffix's alphabet is upper-case letters and digits, so its case carries nothing).
    """
    value = raw.strip()
    if not id_shaped(value):
        raise InvalidSalesforceId(
            f"{_describe(value)} is not a Salesforce ID (15 or 18 letters and digits)",
            value=value,
        )
    if len(value) == 15:
        return value + checksum(value)
    body, suffix = value[:15], value[15:].upper()
    if checksum(body) == suffix:
        return body + suffix
    repaired = _repair_case(body, suffix)
    if repaired is not None and (value == value.upper() or value == value.lower()):
        return repaired + suffix
    raise InvalidSalesforceId(
        f"{_describe(value)} fails its checksum (expected suffix {checksum(body)!r})",
        value=value,
    )


def require_prefix(canonical: str, prefixes: Iterable[str]) -> str:
    """`canonical` itself when its 3-character key prefix is one of `prefixes`."""
    allowed = tuple(prefixes)
    if canonical[:3] not in allowed:
        raise InvalidSalesforceId(
            f"{canonical} has key prefix {canonical[:3]!r}; accepted: {', '.join(allowed)}",
            value=canonical,
        )
    return canonical


def same_org(org_id: str, allowed: Iterable[str]) -> bool:
    """Whether `org_id` names one of `allowed`: Organization IDs compare on their first 15
    characters, so the 15- and 18-character forms of one org match."""
    head = org_id.strip()[:15]
    return len(head) == 15 and any(head == other[:15] for other in allowed)


def _repair_case(body: str, suffix: str) -> str | None:
    """The 15 characters with each letter's case set as the checksum says, if it decodes."""
    if len(suffix) != 3 or any(char not in _CHECKSUM_ALPHABET for char in suffix):
        return None
    chars = []
    for chunk_index, code in enumerate(suffix):
        bits = _CHECKSUM_ALPHABET.index(code)
        chunk = body[chunk_index * 5 : chunk_index * 5 + 5]
        for i, char in enumerate(chunk):
            upper = bool(bits & (1 << i))
            if upper and not char.isalpha():
                return None  # the checksum marks a digit as upper-case: not this ID's checksum
            chars.append(char.upper() if upper else char.lower())
    return "".join(chars)


def _describe(value: str) -> str:
    shown = value if len(value) <= 40 else value[:40] + "…"
    return repr(shown)
