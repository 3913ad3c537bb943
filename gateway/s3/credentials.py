"""The credentials every S3 signature uses: static keys, or the standard AWS chain kept fresh.

The chain is botocore's own resolver (through aiobotocore): environment, shared config and profile
(`credential_process` included), web identity token file, container credentials, EC2 IMDSv2. Its
temporary credentials are refreshed in the background before botocore's refresh window, so a request
never waits on a refresh; the aiobotocore client shares the same credentials object, so control-plane
calls and our own signer rotate together. Readers take one `Credentials` snapshot per signature, so a
rotation mid-request cannot mix keys (docs/architecture.md §7.3).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from gateway.s3.sigv4 import Credentials

log = logging.getLogger(__name__)

# botocore refreshes when this much of a credential's life is left (its advisory window) ...
ADVISORY_WINDOW = timedelta(minutes=15)
# ... and blocks every caller below this (its mandatory window).
MANDATORY_WINDOW = timedelta(minutes=10)
MAX_SLEEP = 300.0
RETRY_AFTER_FAILURE = 5.0


class CredentialSource:
    """The current credentials; `current` is swapped whole, never mutated."""

    def __init__(self, current: Credentials, resolved: Any = None) -> None:
        self.current = current
        # botocore/aiobotocore credentials object (None for static keys).
        self._resolved = resolved

    @classmethod
    def static(cls, access_key_id: str, secret_access_key: str, session_token: str = "") -> CredentialSource:
        return cls(Credentials(access_key_id, secret_access_key, session_token or None))

    @classmethod
    async def from_chain(cls, session: Any) -> CredentialSource:
        """The standard chain of an aiobotocore session (the one its S3 client also uses)."""
        resolved = await session.get_credentials()
        if resolved is None:
            raise LookupError("no AWS credentials found: set GATEWAY_S3_ACCESS_KEY_ID/SECRET_ACCESS_KEY, or "
                              "configure the AWS credential chain (env, profile, web identity, container, IMDS)")
        source = cls(Credentials("", ""), resolved)
        await source.refresh()
        return source

    @property
    def expires_at(self) -> datetime | None:
        return self.current.expires_at

    @property
    def refreshes(self) -> bool:
        return self._resolved is not None and getattr(self._resolved, "_expiry_time", None) is not None

    async def refresh(self) -> None:
        """Ask botocore for its current credentials; it fetches new ones inside its refresh window."""
        resolved = self._resolved
        frozen = await resolved.get_frozen_credentials()
        # Read right after the await: botocore publishes the frozen credentials and expiry together.
        expiry = getattr(resolved, "_expiry_time", None)
        if expiry is not None:
            expiry = expiry.astimezone(UTC)
            _fit_windows(resolved, expiry)
        fresh = Credentials(frozen.access_key, frozen.secret_key, frozen.token or None, expiry)
        if fresh != self.current:
            if self.current.access_key_id:
                log.info("S3 credentials rotated (new key %s...%s, expires %s)", fresh.access_key_id[:4],
                         fresh.access_key_id[-4:], expiry.isoformat() if expiry else "never")
            self.current = fresh

    def seconds_until_refresh(self) -> float | None:
        """When the background task should ask again: as botocore's advisory window opens."""
        if not self.refreshes or self.current.expires_at is None:
            return None
        advisory = getattr(self._resolved, "_advisory_refresh_timeout", ADVISORY_WINDOW.total_seconds())
        due = self.current.expires_at - timedelta(seconds=advisory) - datetime.now(UTC)
        return min(MAX_SLEEP, max(1.0, due.total_seconds() + 1.0))

    async def keep_fresh(self) -> None:
        """Run for the life of the process (a task of the app factory)."""
        while (wait := self.seconds_until_refresh()) is not None:
            await asyncio.sleep(wait)
            try:
                await self.refresh()
            except Exception as exc:  # the old credentials stay until they expire; try again soon
                log.warning("refreshing S3 credentials failed: %r", exc)
                await asyncio.sleep(RETRY_AFTER_FAILURE)


def _fit_windows(resolved: Any, expiry: datetime) -> None:
    """Short-lived credentials (STS with DurationSeconds=900, test servers) sit inside botocore's fixed
    15/10-minute windows for their whole life, so botocore would fetch on every call and make callers
    wait. Scale the windows to the lifetime instead: refresh at half life, block at a quarter."""
    if not hasattr(resolved, "_advisory_refresh_timeout"):
        return
    left = (expiry - datetime.now(UTC)).total_seconds()
    advisory, mandatory = ADVISORY_WINDOW.total_seconds(), MANDATORY_WINDOW.total_seconds()
    if left <= advisory * 1.5:
        advisory, mandatory = max(1, int(left / 2)), max(1, int(left / 4))
    resolved._advisory_refresh_timeout = advisory
    resolved._mandatory_refresh_timeout = mandatory
