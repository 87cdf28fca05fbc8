"""Which ChiliPiper tool performs each action, learnt from ChiliPiper's own tool listing.

ChiliPiper is replacing its v1 GET-style tools with POST variants: `crm-cancel-post` and
`crm-noshow-post` (Scalekit lists them as `chilipipermcp_crm_cancel_post`, with underscores,
beside `chilipipermcp_crm-cancel`). Names are therefore compared with the prefix removed,
lower case, `-` and `_` alike, and used exactly as listed. The POST variant wins when offered.

The listing is asked once per process (at worker start-up, or before the first call when
ChiliPiper could not be reached then), shared by the process's threads, and asked again when
a call answers "unknown tool".
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from worker.domain.operations import Action
from worker.errors import ToolsMissing

# Preferred first. Compared in canonical form (see `canonical`).
CANDIDATES: Mapping[Action, tuple[str, ...]] = {
    Action.GET: ("crm_get",),
    Action.CANCEL: ("crm_cancel_post", "crm_cancel"),
    Action.NOSHOW: ("crm_noshow_post", "crm_noshow"),
}


def canonical(name: str, prefix: str = "") -> str:
    """`chilipipermcp_crm-cancel` and `crm_cancel` alike: `crm_cancel`."""
    name = name.strip().lower()
    if prefix and name.startswith(prefix.lower() + "_"):
        name = name[len(prefix) + 1 :]
    return name.replace("-", "_")


def same_tool(one: str, other: str) -> bool:
    """Whether two names are one tool, whatever prefix either carries: Scalekit's
    `chilipipermcp_crm_cancel_post` and ChiliPiper's own `crm-cancel-post`."""
    one, other = canonical(one.strip("'\"`")), canonical(other.strip("'\"`"))
    return one == other or one.endswith("_" + other) or other.endswith("_" + one)


@dataclass(frozen=True)
class ToolNames:
    """The tool name, as ChiliPiper lists it, for each action."""

    by_action: Mapping[Action, str]

    def __getitem__(self, action: Action) -> str:
        return self.by_action[action]

    def __str__(self) -> str:
        return ", ".join(self.by_action[action] for action in Action)

    @classmethod
    def choose(cls, offered: Iterable[str], prefix: str = "") -> ToolNames:
        """The preferred tool for every action among `offered`; ToolsMissing naming what is
        not there, and what is, when an action has none."""
        listed = list(offered)
        by_canonical = {canonical(name, prefix): name for name in listed}
        chosen: dict[Action, str] = {}
        missing: list[str] = []
        for action, candidates in CANDIDATES.items():
            found = next((by_canonical[c] for c in candidates if c in by_canonical), None)
            if found is None:
                missing.append(" or ".join(_spelled(c) for c in candidates))
            else:
                chosen[action] = found
        if missing:
            relevant = sorted(name for name in listed if "crm" in name.lower())
            raise ToolsMissing(
                f"ChiliPiper offers no {'; no '.join(missing)} (of {len(listed)} tool(s) "
                f"listed, CRM tools: {', '.join(relevant) or 'none'}): check that the token "
                "or connected account may use the CRM tools (cancel and no-show need the "
                "meeting.modify permission)",
                missing=tuple(missing),
            )
        return cls(chosen)


def _spelled(candidate: str) -> str:
    """How ChiliPiper's MCP server spells a tool: with dashes."""
    return candidate.replace("_", "-")


class ToolCatalog:
    """The process's `ToolNames`, listed on first need and shared between threads."""

    def __init__(self, list_tools: Callable[[], list[str]], prefix: str = "") -> None:
        self._list_tools = list_tools
        self._prefix = prefix
        self._lock = threading.Lock()
        self._names: ToolNames | None = None

    def names(self) -> ToolNames:
        with self._lock:
            if self._names is None:
                self._names = ToolNames.choose(self._list_tools(), self._prefix)
            return self._names

    def refresh(self, stale: ToolNames) -> ToolNames:
        """List again, unless another thread already did since `stale` was read."""
        with self._lock:
            if self._names is stale:
                self._names = None
        return self.names()
