"""Finding parts in S3's ListParts answers, which some stores order by name or repeat
(docs/architecture.md §3.2)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime

from gateway.core.model import ConfirmedPart, Upload
from gateway.core.ports import ListedPart, ObjectStore

# Some stores list a part a moment after UploadPart returns: about 3 retries over 2 s.
LISTING_RETRY_DELAYS = (0.25, 0.75, 1.0)
PROBE_MAX_PARTS = 3
LIST_PAGE = 1000
_EPOCH = datetime.min.replace(tzinfo=UTC)


def confirmed(part: ListedPart) -> ConfirmedPart:
    return ConfirmedPart(part.number, part.size, part.etag, part.checksum)


async def find_parts(store: ObjectStore, upload: Upload, wanted: Sequence[int]) -> dict[int, ListedPart]:
    """The wanted parts S3 holds, retrying a few times for stores that list a new part late."""
    found: dict[int, ListedPart] = {}
    for delay in (*LISTING_RETRY_DELAYS, None):
        remaining = [n for n in wanted if n not in found]
        found.update(await list_from(store, upload, remaining))
        if all(n in found for n in wanted) or delay is None:
            return found
        await asyncio.sleep(delay)
    return found


async def list_from(store: ObjectStore, upload: Upload, wanted: Sequence[int]) -> dict[int, ListedPart]:
    """ListParts pages from just before the first wanted part until all are seen or the listing ends.

    The marker only ever moves to just before the first part still missing: some stores list by
    name (SeaweedFS puts part 10000 before 1000) or list stale duplicates, so neither "past the
    last wanted number" nor NextPartNumberMarker can be trusted to skip ahead.
    """
    want = set(wanted)
    page_size = PROBE_MAX_PARTS if len(want) == 1 else LIST_PAGE
    marker = min(want) - 1
    found: dict[int, ListedPart] = {}
    while True:
        page = await store.list_parts(upload.key, upload.multipart_id or "", marker, page_size)
        progress = False
        for part in page.parts:
            if part.number in want and _better(upload, part, found.get(part.number)):
                progress = progress or part.number not in found
                found[part.number] = part
        missing = want - found.keys()
        if not missing or not page.truncated:
            return found
        if min(missing) - 1 > marker:
            marker = min(missing) - 1
        elif not progress and page_size < LIST_PAGE:
            page_size = LIST_PAGE  # a probe filled by duplicates of the part before: look further
            continue
        else:
            return found
        page_size = LIST_PAGE


async def list_all(store: ObjectStore, upload: Upload) -> list[ListedPart]:
    """Every part S3 holds for the upload, one per number (a stale duplicate loses), in number order.
    Pages are followed by NextPartNumberMarker while it moves forward (a store that lists by name still
    returns every part across the pages; the marker never moves back, so the walk ends)."""
    found: dict[int, ListedPart] = {}
    marker = 0
    while True:
        page = await store.list_parts(upload.key, upload.multipart_id or "", marker, LIST_PAGE)
        for part in page.parts:
            if _better(upload, part, found.get(part.number)):
                found[part.number] = part
        if not page.truncated or page.next_marker <= marker:
            return [found[n] for n in sorted(found)]
        marker = page.next_marker


def _better(upload: Upload, part: ListedPart, current: ListedPart | None) -> bool:
    """A store may list stale duplicates of a part: prefer the planned size, then the newest."""
    if current is None:
        return True
    planned = upload.part_range(part.number)[1]
    if (part.size == planned) != (current.size == planned):
        return part.size == planned
    return (part.last_modified or _EPOCH) >= (current.last_modified or _EPOCH)
