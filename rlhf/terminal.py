"""Text shown in a terminal: what came from a model or a dataset, made harmless to print."""

from __future__ import annotations

import re

#: C0/C1 control characters (but newline and tab) and Unicode's bidirectional overrides: a model's
#: answer (or a prompt) must not move the cursor, recolour or hide text in the user's terminal.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """``text`` with control characters escaped (``\x1b`` -> ``\\x1b``), newlines and tabs kept."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)
