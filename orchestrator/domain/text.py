"""Text from appliances made storable: PostgreSQL's text and jsonb refuse NUL characters,
and UTF-8 cannot encode an unpaired surrogate (which a JSON body may carry as `\\ud800`).
Both are replaced, so that one bad answer can never make a write fail."""

from __future__ import annotations

import re
from typing import Any

_SURROGATE = re.compile("[\ud800-\udfff]")
REPLACEMENT = "\ufffd"


def clean_text(value: str | None) -> str | None:
    """`value` without NUL characters (dropped) or unpaired surrogates (replaced by U+FFFD).

    A Python `str` holds a surrogate pair only as two unpaired surrogates (a decoded pair
    is one code point), so every surrogate found here is unpaired."""
    if value is None:
        return None
    if "\x00" in value:
        value = value.replace("\x00", "")
    if _SURROGATE.search(value):
        value = _SURROGATE.sub(REPLACEMENT, value)
    return value


def clean_json(value: Any) -> Any:
    """`clean_text` applied to every string of a JSON-like value (keys included)."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {clean_text(str(k)): clean_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean_json(v) for v in value]
    return value
