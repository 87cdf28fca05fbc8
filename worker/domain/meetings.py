"""What ChiliPiper says about a meeting, read the way ChiliPiper really writes it.

ChiliPiper's records carry `meetingStatus` (`Active`, `Canceled`, `NoShow`, `Completed` in
the Edge API; `CANCELLED`, `NO_SHOW` in its tool descriptions), the meeting's ID as
`meetingId` (`id` from `meeting-get`), and its times under `dateTime` (or an `activities`
entry). A record may also come wrapped as `{"meeting": {...}}`. Every spelling is read here,
once, into a `Meeting` that keeps only what operators need: no attendees, no e-mail addresses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class MeetingStatus(StrEnum):
    BOOKED = "BOOKED"
    CANCELLED = "CANCELLED"
    NO_SHOW = "NO_SHOW"
    COMPLETED = "COMPLETED"


# Spellings seen or documented, compared with case, spaces, dashes and underscores removed.
_SPELLINGS = {
    "ACTIVE": MeetingStatus.BOOKED,
    "BOOKED": MeetingStatus.BOOKED,
    "SCHEDULED": MeetingStatus.BOOKED,
    "CONFIRMED": MeetingStatus.BOOKED,
    "RESCHEDULED": MeetingStatus.BOOKED,
    "CANCELLED": MeetingStatus.CANCELLED,
    "CANCELED": MeetingStatus.CANCELLED,
    "NOSHOW": MeetingStatus.NO_SHOW,
    "COMPLETED": MeetingStatus.COMPLETED,
}


def normalize_status(raw: str) -> MeetingStatus | None:
    """`raw` as a known status, whatever its spelling or casing; None when unknown."""
    return _SPELLINGS.get(re.sub(r"[\s_\-]", "", raw).upper())


@dataclass(frozen=True)
class Meeting:
    """The part of a meeting record worth keeping with an operation.

    `status` is the normalized status when it is a known one; `status_as_sent` is ChiliPiper's
    word, shown to operators verbatim (an unknown status is never guessed at)."""

    status_as_sent: str | None = None
    meeting_id: str | None = None
    start: str | None = None
    end: str | None = None
    booked_at: str | None = None

    @property
    def status(self) -> MeetingStatus | None:
        return normalize_status(self.status_as_sent) if self.status_as_sent else None

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> Meeting:
        """Read a record in any of the shapes ChiliPiper answers with; fields it lacks stay
        None (an empty record gives an empty Meeting)."""
        record, nested = data, data.get("meeting")
        if isinstance(nested, dict) and not _text(data, "meetingStatus"):
            record = nested  # `{"status": "ok", "meeting": {...}}`: the meeting's own status
        window = record.get("dateTime")
        if not isinstance(window, dict):
            window = {}
        return cls(
            status_as_sent=_status_of(record),
            meeting_id=_text(record, "meetingId", "id", "meetingIdChili"),
            start=_text(window, "start")
            or _text(record, "startTime", "meetingStartTime", "start")
            or _scheduled(record),
            end=_text(window, "end") or _text(record, "endTime", "meetingEndTime", "end"),
            booked_at=_text(record, "bookedAt"),
        )

    def to_record(self) -> dict[str, str]:
        """The fields that are known, for storage with the operation."""
        fields = {
            "meeting_id": self.meeting_id,
            "status": self.status.value if self.status else None,
            "status_as_sent": self.status_as_sent,
            "start": self.start,
            "end": self.end,
            "booked_at": self.booked_at,
        }
        return {name: value for name, value in fields.items() if value is not None}


def _status_of(record: dict[str, Any]) -> str | None:
    """`meetingStatus`, else `status`: as text only (an HTTP `"status": 200` is no meeting
    status)."""
    for name in ("meetingStatus", "status"):
        value = record.get(name)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def _text(record: dict[str, Any], *names: str) -> str | None:
    for name in names:
        value = record.get(name)
        if isinstance(value, str) and value.strip():
            return value.strip()
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
    return None


def _scheduled(record: dict[str, Any]) -> str | None:
    """`meeting-get` keeps the meeting's time in `activities`, in a ScheduledAt entry."""
    for activity in record.get("activities") or []:
        if isinstance(activity, dict) and str(activity.get("type", "")).lower() in (
            "scheduledat",
            "happensat",
        ):
            return _text(activity, "at", "time", "value", "dateTime")
    return None
