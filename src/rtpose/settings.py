"""Counts given by the user as text (command-line options, environment variables), checked with an error
that names the setting."""

from __future__ import annotations

import os

from rtpose.errors import RtposeError


def parse_count(text: str, name: str, minimum: int, accepted: str = "a whole number") -> int:
    """`text` as an int of at least `minimum`; a clear error naming `name` otherwise."""
    try:
        count = int(text)
    except ValueError:
        raise RtposeError(f"{name} takes {accepted}, not {text!r}") from None
    if count < minimum:
        raise RtposeError(f"{name} must be at least {minimum}, not {count}")
    return count


def environment_count(name: str, minimum: int) -> int | None:
    """The count in environment variable `name` (None where it is unset or blank)."""
    value = os.environ.get(name, "").strip()
    return parse_count(value, name, minimum) if value else None
