"""Choosing ChiliPiper's tools from its listing, in both transports' spellings."""

from __future__ import annotations

import threading

import pytest

from worker.chilipiper.tools import ToolCatalog, ToolNames
from worker.domain.operations import Action
from worker.errors import ToolsMissing

MCP_V1 = ["crm-get", "crm-cancel", "crm-noshow", "crm-activity", "meeting-get"]
MCP_BOTH = [*MCP_V1, "crm-cancel-post", "crm-noshow-post"]
# Scalekit's catalogue: the v1 tools keep their dashes, the v2 ones use underscores.
SCALEKIT_BOTH = [
    "chilipipermcp_crm-get",
    "chilipipermcp_crm-cancel",
    "chilipipermcp_crm-noshow",
    "chilipipermcp_crm_cancel_post",
    "chilipipermcp_crm_noshow_post",
    "chilipipermcp_meeting_cancel_post",
]


@pytest.mark.parametrize(
    ("listed", "prefix", "chosen"),
    [
        (MCP_V1, "", ("crm-get", "crm-noshow", "crm-cancel")),
        (MCP_BOTH, "", ("crm-get", "crm-noshow-post", "crm-cancel-post")),
        (
            SCALEKIT_BOTH,
            "chilipipermcp",
            (
                "chilipipermcp_crm-get",
                "chilipipermcp_crm_noshow_post",
                "chilipipermcp_crm_cancel_post",
            ),
        ),
        (
            ["CRM_GET", "Crm_Cancel_Post", "crm-noshow"],
            "",
            ("CRM_GET", "crm-noshow", "Crm_Cancel_Post"),
        ),
    ],
)
def test_the_post_variant_is_preferred_and_names_are_kept_as_listed(
    listed: list[str], prefix: str, chosen: tuple[str, str, str]
) -> None:
    tools = ToolNames.choose(listed, prefix)
    assert (tools[Action.GET], tools[Action.NOSHOW], tools[Action.CANCEL]) == chosen


def test_another_connectors_prefix_is_not_taken_for_ours() -> None:
    with pytest.raises(ToolsMissing):
        ToolNames.choose(
            ["othermcp_crm-get", "othermcp_crm-cancel", "othermcp_crm-noshow"], "chilipipermcp"
        )


def test_a_listing_without_cancel_names_what_is_missing() -> None:
    with pytest.raises(ToolsMissing) as missing:
        ToolNames.choose(["crm-get", "crm-noshow-post", "meeting-cancel-post"])
    assert missing.value.missing == ("crm-cancel-post or crm-cancel",)
    assert "meeting.modify" in str(missing.value)


def test_the_catalogue_lists_once_for_all_threads_and_again_on_request() -> None:
    listings: list[int] = []
    gate = threading.Event()

    def list_tools() -> list[str]:
        gate.wait(1)
        listings.append(1)
        return MCP_BOTH if len(listings) == 1 else MCP_V1

    catalog = ToolCatalog(list_tools)
    threads = [threading.Thread(target=catalog.names) for _ in range(8)]
    for thread in threads:
        thread.start()
    gate.set()
    for thread in threads:
        thread.join()
    first = catalog.names()
    assert len(listings) == 1
    assert first[Action.CANCEL] == "crm-cancel-post"
    again = catalog.refresh(first)
    assert again[Action.CANCEL] == "crm-cancel"
    assert catalog.refresh(first) is again  # a thread with the stale names does not list again
    assert len(listings) == 2
