from __future__ import annotations

import pytest

from worker.domain.salesforce_ids import canonical_id, checksum, require_prefix, same_org
from worker.errors import InvalidSalesforceId

# The checked pairs of SOURCES.md (tests/fixtures/salesforce/SOURCES.md).
PAIRS = [
    ("00De0000000pmu1", "00De0000000pmu1EAA"),
    ("00DV0000008s2Sr", "00DV0000008s2SrMAI"),
    ("00F9d000003ZjQr", "00F9d000003ZjQrEAK"),
    ("a0D30000001n7Pi", "a0D30000001n7PiEAI"),
    ("70130000001tcyI", "70130000001tcyIAAQ"),
]


@pytest.mark.parametrize(("raw", "expected"), PAIRS)
def test_15_char_id_gains_its_checksum(raw: str, expected: str) -> None:
    assert canonical_id(raw) == expected


@pytest.mark.parametrize(("raw", "expected"), PAIRS)
def test_valid_18_char_id_is_kept(raw: str, expected: str) -> None:
    assert canonical_id(expected) == expected
    assert checksum(raw) == expected[15:]


@pytest.mark.parametrize("expected", [pair[1] for pair in PAIRS] + ["00U5g00000MnOpQEAV"])
def test_wholesale_recased_18_char_id_is_repaired(expected: str) -> None:
    assert canonical_id(expected.upper()) == expected
    assert canonical_id(expected.lower()) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("00U5g00000MnOpQeav", "00U5g00000MnOpQEAV"),  # the whole suffix
        ("00De0000000pmu1eAa", "00De0000000pmu1EAA"),  # part of it
        ("70130000001tcyIaaq", "70130000001tcyIAAQ"),
    ],
)
def test_18_char_id_whose_suffix_alone_was_lower_cased_is_repaired(raw: str, expected: str) -> None:
    assert canonical_id(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "00De0000000pmu1EAB",  # wrong checksum
        "00De0000000pmu1eab",  # suffix re-cased and wrong
        "00DE0000000pmu1EAA",  # one letter re-cased: ambiguous, not repairable
        "04le0000004lnFFAAZ",  # the corrupted notification Id of the perl fixture
        "someOrganizationId",  # the guardian fixture's placeholder: 18 letters, no checksum
    ],
)
def test_checksum_mismatch_is_rejected(raw: str) -> None:
    with pytest.raises(InvalidSalesforceId, match="checksum"):
        canonical_id(raw)


@pytest.mark.parametrize(
    "raw", ["", "00U", "aContactId", "00U5g00000MnOpQEAVX", "00U5g00000MnOp-EAV", "00U5g00000MnOpé"]
)
def test_malformed_id_is_rejected_with_the_value(raw: str) -> None:
    with pytest.raises(InvalidSalesforceId, match="not a Salesforce ID"):
        canonical_id(raw)


def test_whitespace_around_an_id_is_stripped() -> None:
    assert canonical_id("\n  00U5g00000MnOpQ \t") == "00U5g00000MnOpQEAV"


def test_key_prefix_must_be_accepted() -> None:
    assert require_prefix("00U5g00000MnOpQEAV", ["00U"]) == "00U5g00000MnOpQEAV"
    with pytest.raises(InvalidSalesforceId, match="key prefix '003'"):
        require_prefix("0031I0000081tbPQAQ", ["00U", "a0X"])


@pytest.mark.parametrize(
    ("org", "allowed", "expected"),
    [
        ("00D5g000004XyZqEAK", ["00D5g000004XyZq"], True),
        ("00D5g000004XyZq", ["00D5g000004XyZqEAK"], True),
        ("00D5g000004XyZr", ["00D5g000004XyZqEAK"], False),
        ("00d5g000004xyzq", ["00D5g000004XyZqEAK"], False),  # org IDs are case-sensitive
        ("00D5g", ["00D5g000004XyZqEAK"], False),
    ],
)
def test_organization_ids_compare_on_their_first_15_chars(
    org: str, allowed: list[str], expected: bool
) -> None:
    assert same_org(org, allowed) is expected
