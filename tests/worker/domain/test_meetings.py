"""Meeting records in every shape ChiliPiper writes them, read into what operators need."""

from __future__ import annotations

from typing import Any

import pytest

from worker.domain.meetings import Meeting, MeetingStatus, normalize_status

# A record as the Edge API and `crm-get` answer it (live spellings), attendees included.
EDGE_RECORD = {
    "meetingId": "6f1c2a9e-8d1b-4c53-9a57-2f0e4b7d9c11",
    "meetingStatus": "Canceled",
    "dateTime": {"start": "2026-12-01T15:00:00Z", "end": "2026-12-01T15:30:00Z"},
    "bookedAt": "2026-11-20T09:12:44Z",
    "hostEmail": "rep@example.com",
    "primaryGuest": {"value": "guest@customer.example"},
    "attendees": [{"email": "guest@customer.example", "fullName": "Pat Guest"}],
}


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        ("Active", MeetingStatus.BOOKED),
        ("BOOKED", MeetingStatus.BOOKED),
        ("scheduled", MeetingStatus.BOOKED),
        ("Canceled", MeetingStatus.CANCELLED),
        ("CANCELLED", MeetingStatus.CANCELLED),
        ("cancelled", MeetingStatus.CANCELLED),
        ("NoShow", MeetingStatus.NO_SHOW),
        ("NO_SHOW", MeetingStatus.NO_SHOW),
        ("no-show", MeetingStatus.NO_SHOW),
        ("No Show", MeetingStatus.NO_SHOW),
        ("Completed", MeetingStatus.COMPLETED),
        ("Pending approval", None),
        ("", None),
    ],
)
def test_statuses_are_normalized_whatever_the_spelling(
    raw: str, status: MeetingStatus | None
) -> None:
    assert normalize_status(raw) is status


def test_an_edge_record_keeps_its_id_status_and_times_and_drops_the_attendees() -> None:
    meeting = Meeting.from_record(EDGE_RECORD)
    assert meeting.status is MeetingStatus.CANCELLED
    assert meeting.to_record() == {
        "meeting_id": "6f1c2a9e-8d1b-4c53-9a57-2f0e4b7d9c11",
        "status": "CANCELLED",
        "status_as_sent": "Canceled",
        "start": "2026-12-01T15:00:00Z",
        "end": "2026-12-01T15:30:00Z",
        "booked_at": "2026-11-20T09:12:44Z",
    }
    assert "example" not in str(meeting.to_record())


@pytest.mark.parametrize(
    ("record", "status_as_sent"),
    [
        ({"meetingId": "m1", "meetingStatus": "CANCELLED"}, "CANCELLED"),  # the v2 tools' answer
        ({"id": "m1", "meetingStatus": "NoShow"}, "NoShow"),  # meeting-get names the ID `id`
        ({"crmEventId": "00U", "status": "BOOKED"}, "BOOKED"),
        ({"meeting": {"meetingId": "m1", "meetingStatus": "Active"}}, "Active"),
        ({"meeting": {"status": "cancelled"}}, "cancelled"),
    ],
)
def test_the_status_is_found_in_every_shape(record: dict[str, Any], status_as_sent: str) -> None:
    assert Meeting.from_record(record).status_as_sent == status_as_sent


def test_an_unknown_status_is_kept_verbatim_for_operators() -> None:
    meeting = Meeting.from_record({"meetingStatus": "AwaitingApproval"})
    assert meeting.status is None
    assert meeting.to_record() == {"status_as_sent": "AwaitingApproval"}


def test_a_record_without_a_status_reads_as_an_empty_meeting() -> None:
    assert Meeting.from_record({"result": 3}) == Meeting()
    assert Meeting.from_record({}).to_record() == {}


@pytest.mark.parametrize(
    ("record", "status"),
    [
        # An envelope's own status is not the meeting's.
        ({"status": "Active", "meeting": {"meetingStatus": "Canceled"}}, MeetingStatus.CANCELLED),
        ({"status": "success", "meeting": {"status": "NO_SHOW"}}, MeetingStatus.NO_SHOW),
        ({"status": 200, "meetingStatus": "Canceled"}, MeetingStatus.CANCELLED),
        ({"status": 200}, None),
    ],
)
def test_the_meetings_own_status_wins_over_an_envelopes(
    record: dict[str, Any], status: MeetingStatus | None
) -> None:
    assert Meeting.from_record(record).status is status
