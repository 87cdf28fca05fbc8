"""Text a sender controls, cut to what it may cost us to keep.

A bound in characters is not a bound in bytes: a character may take 4 bytes in UTF-8 and 12
in a JSON document written with ASCII escapes (`\\ud83c\\udf89`), as Celery and kombu write
the broker's messages. So kept text is measured as it will be stored, escaped, and cut there.
"""

from __future__ import annotations

import json

ELLIPSIS = "…"


def escaped_length(text: str) -> int:
    """What `text` takes inside a JSON string written with ASCII escapes."""
    return len(json.dumps(text)) - 2


def bounded(text: str, limit: int) -> str:
    """`text` itself when it takes at most `limit` escaped, else its longest prefix that
    does (with room for an ellipsis), then an ellipsis."""
    if escaped_length(text) <= limit:
        return text
    budget = limit - escaped_length(ELLIPSIS)
    kept = []
    for char in text:
        budget -= escaped_length(char)
        if budget < 0:
            break
        kept.append(char)
    return "".join(kept) + ELLIPSIS
