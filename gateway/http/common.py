"""Request parsing shared by the http handlers."""

from __future__ import annotations

import re

from aiohttp import web

from gateway.core.errors import ErrorCode, UploadError
from gateway.core.model import Owner
from gateway.http.keys import OWNER, SETTINGS

DIGITS = re.compile(r"^[0-9]{1,19}$")
UPLOAD_ID_PATTERN = "[A-Za-z0-9_-]{16,64}"
UPLOAD_ID = re.compile(f"^{UPLOAD_ID_PATTERN}$")


def owner_of(request: web.Request) -> Owner:
    owner: Owner = request[OWNER]
    return owner


def upload_url(request: web.Request, upload_id: str) -> str:
    settings = request.app[SETTINGS]
    path = f"{settings.base_path}/{upload_id}"
    if settings.public_url:
        return settings.public_url + path
    return str(request.url.with_path(path).with_query(None))


def parse_non_negative(request: web.Request, name: str) -> int | None:
    raw = request.headers.get(name)
    if raw is None:
        return None
    if not DIGITS.match(raw.strip()):
        code = ErrorCode.INVALID_OFFSET if name == "Upload-Offset" else ErrorCode.INVALID_UPLOAD_LENGTH
        raise UploadError(code, f"{name} must be a non-negative integer")
    return int(raw.strip())
