"""Event delivery (docs/architecture.md §3.6): the outbox rows written with each state change go to
every configured webhook URL, at least once, with backoff; any instance may deliver (rows are leased)."""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence

from gateway.core.ports import Event, EventOutbox, WebhookSender

log = logging.getLogger(__name__)

MAX_BACKOFF = 3600.0
LEASE_SECONDS = 60.0


def backoff(attempts: int) -> float:
    """1 s, 2 s, 4 s ... capped at an hour, with jitter so retries of many events spread out."""
    base: float = min(MAX_BACKOFF, 2.0 ** attempts)
    return base * random.uniform(0.8, 1.2)


class EventDispatcher:
    def __init__(self, outbox: EventOutbox, sender: WebhookSender, urls: Sequence[str], batch: int = 50) -> None:
        self.outbox = outbox
        self.sender = sender
        self.urls = tuple(urls)
        self.batch = batch

    async def run_once(self) -> int:
        events = await self.outbox.claim_events(self.batch, LEASE_SECONDS)
        for event in events:
            await self._deliver(event)
        return len(events)

    async def _deliver(self, event: Event) -> None:
        acked = list(event.acked_urls)
        errors = []
        for url in self.urls:
            if url in acked:
                continue
            try:
                await self.sender.send(url, event)
                acked.append(url)
            except Exception as exc:  # any failure of a receiver means: try that URL again later
                errors.append(f"{url}: {exc!r}"[:300])
        delivered = all(url in acked for url in self.urls)
        if errors:
            log.warning("event %s (%s of %s) not delivered yet: %s", event.id, event.type, event.upload_id, errors)
        await self.outbox.record_delivery(event.id, acked, delivered, "; ".join(errors) or None,
                                          backoff(event.attempts))
