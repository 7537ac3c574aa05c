"""Counts from the command line and the environment: checked, with errors that name the setting."""

from __future__ import annotations

import pytest

from rtpose.errors import RtposeError
from rtpose.settings import environment_count, parse_count


def test_a_count_is_a_whole_number_of_at_least_the_minimum() -> None:
    assert parse_count("3", "--workers", 1) == 3
    with pytest.raises(RtposeError, match=r"--workers takes a number or 'auto', not 'many'"):
        parse_count("many", "--workers", 1, accepted="a number or 'auto'")
    with pytest.raises(RtposeError, match="--workers must be at least 1, not 0"):
        parse_count("0", "--workers", 1)


def test_an_unset_or_blank_variable_gives_no_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RTPOSE_SERVER_STEP", raising=False)
    assert environment_count("RTPOSE_SERVER_STEP", 1) is None
    monkeypatch.setenv("RTPOSE_SERVER_STEP", "  ")
    assert environment_count("RTPOSE_SERVER_STEP", 1) is None
    monkeypatch.setenv("RTPOSE_SERVER_STEP", " 4 ")
    assert environment_count("RTPOSE_SERVER_STEP", 1) == 4
    monkeypatch.setenv("RTPOSE_SERVER_STEP", "0")
    with pytest.raises(RtposeError, match="RTPOSE_SERVER_STEP must be at least 1"):
        environment_count("RTPOSE_SERVER_STEP", 1)
