"""One line of an exception, for the one-line errors the model layer raises.

Shared by weight loading and image decoding: state_dict mismatches span many lines and some
library messages are huge, but an `InputError` or a per-row decode error is one short line.
"""

from __future__ import annotations

import re


def one_line(exc: BaseException, limit: int = 240) -> str:
    """One line of an exception: state_dict errors span many lines, some messages are huge."""
    text = re.sub(r"\s+", " ", str(exc)).strip() or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"
