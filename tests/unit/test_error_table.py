"""Every error code has a status: a code missing from the table would become a bare 500."""

from __future__ import annotations

from gateway.core.errors import ErrorCode, UploadError
from gateway.http.errors import STATUS, render, render_problem


def test_every_error_code_has_a_client_status() -> None:
    assert set(STATUS) == set(ErrorCode)
    assert all(400 <= status < 600 and status != 500 for status in STATUS.values())


def test_every_error_code_renders_in_both_formats() -> None:
    for code in ErrorCode:
        error = UploadError(code, "message")
        assert render(error).status == STATUS[code]
        assert render_problem(error).status == STATUS[code]
