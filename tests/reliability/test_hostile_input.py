"""Generated bodies at both routes: never a 5xx, and the app stays healthy afterwards."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import SALESFORCE, TOKEN, outbound_message
from worker.domain.salesforce_ids import checksum

EXAMPLES_PER_ROUTE = 3000
FIXTURES = [path.read_bytes() for path in sorted(SALESFORCE.glob("*.xml"))]
ID_CHARS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz "

ALNUM = ID_CHARS.strip()


def valid_ids(prefix: str) -> st.SearchStrategy[str]:
    """Checksum-valid 18-character IDs with the given key prefix."""
    return st.text(ALNUM, min_size=12, max_size=12).map(
        lambda body: prefix + body + checksum(prefix + body)
    )


ids = st.one_of(
    st.text(ID_CHARS, max_size=20),
    valid_ids("00U"),
    valid_ids("003"),
    st.text(max_size=30),
)


@st.composite
def mutated_fixture(draw: st.DrawFn) -> bytes:
    """A real Outbound Message with a few bytes cut, inserted or replaced."""
    body = bytearray(draw(st.sampled_from(FIXTURES)))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(body)))
        match draw(st.sampled_from(["cut", "insert", "replace"])):
            case "cut":
                del body[at : at + draw(st.integers(1, 40))]
            case "insert":
                body[at:at] = draw(st.binary(max_size=30))
            case "replace":
                body[at : at + 1] = draw(st.sampled_from([b"<", b">", b"&", b'"', b"\x00", b"]"]))
    return bytes(body)


@st.composite
def generated_message(draw: st.DrawFn) -> bytes:
    """A well-formed Outbound Message whose IDs and org are arbitrary."""
    pairs = draw(
        st.lists(
            st.tuples(st.one_of(valid_ids("04l"), ids), st.one_of(st.none(), ids)),
            max_size=8,
        )
    )
    org = draw(st.one_of(st.just("00D5g000004XyZqEAK"), st.just("00D5g000004XyZq"), ids))
    escaped = [(_xml(n), None if e is None else _xml(e)) for n, e in pairs]
    return outbound_message(escaped, org_id=_xml(org))


def _xml(text: str) -> str:
    return (
        "".join(c for c in text if c.isprintable())
        .replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
    )


soap_bodies = st.one_of(
    st.binary(max_size=2000),
    st.text(max_size=500).map(str.encode),
    mutated_fixture(),
    generated_message(),
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
events = st.fixed_dictionaries(
    {},
    optional={
        "action": st.one_of(
            st.sampled_from(["get", "noshow", "cancel", "GET", " cancel "]), json_values
        ),
        "crmEventId": st.one_of(ids, json_values),
    },
)
json_bodies = st.one_of(
    st.binary(max_size=500),
    json_values.map(lambda value: json.dumps(value).encode()),
    events.map(lambda event: json.dumps(event).encode()),
    st.lists(events, max_size=120).map(lambda items: json.dumps({"events": items}).encode()),
)


@pytest.fixture
def tally() -> Counter[int]:
    return Counter()


def hammer(
    client: FlaskClient,
    send: Callable[[bytes], Any],
    strategy: st.SearchStrategy[bytes],
    statuses: Counter[int],
) -> None:
    @settings(
        max_examples=EXAMPLES_PER_ROUTE,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def one(body: bytes) -> None:
        response = send(body)
        statuses[response.status_code] += 1
        assert response.status_code < 500, (response.status_code, body[:200])

    one()
    assert client.get("/healthz").status_code == 200


def test_soap_route_never_answers_5xx(
    client: FlaskClient, tally: Counter[int], report: Callable[[str], None]
) -> None:
    url = f"/salesforce/outbound/cancel?token={TOKEN}"
    hammer(
        client,
        lambda body: client.post(url, data=body, content_type="text/xml"),
        soap_bodies,
        tally,
    )
    report(
        f"SOAP route, {sum(tally.values())} generated bodies: "
        f"statuses {dict(sorted(tally.items()))}"
    )
    assert sum(tally.values()) >= EXAMPLES_PER_ROUTE
    assert tally[200] > 0
    assert tally[400] > 0
    fine = client.post(url, data=(SALESFORCE / "synthetic_2x_event.xml").read_bytes())
    assert fine.status_code == 200


def test_json_route_never_answers_5xx(
    client: FlaskClient, tally: Counter[int], report: Callable[[str], None]
) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    hammer(
        client,
        lambda body: client.post("/v1/events", data=body, headers=headers),
        json_bodies,
        tally,
    )
    report(
        f"JSON route, {sum(tally.values())} generated bodies: "
        f"statuses {dict(sorted(tally.items()))}"
    )
    assert sum(tally.values()) >= EXAMPLES_PER_ROUTE
    assert tally[202] > 0
    assert tally[400] > 0
