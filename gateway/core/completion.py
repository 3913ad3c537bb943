"""Exactly-once completion (docs/architecture.md §3.4).

The state changes that can finish an upload (recording parts, declaring a length) go through here:
the one caller whose change moved the upload to `completing` runs CompleteMultipartUpload; an
upload left in `completing` by a dead process or a request that ran out of time is finished by the
completion worker of any instance.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from gateway.core import metadata as md
from gateway.core.errors import ErrorCode, UploadError
from gateway.core.limits import Limits
from gateway.core.listing import list_from
from gateway.core.model import ConfirmedPart, State, Upload
from gateway.core.ports import CompleteRefused, ObjectStore, UploadRepository
from gateway.core.rules import planned_with_length, quota_exceeded

log = logging.getLogger(__name__)


class Completion:
    def __init__(self, repo: UploadRepository, store: ObjectStore, limits: Limits) -> None:
        self.repo = repo
        self.store = store
        self.limits = limits

    async def record_parts(self, upload_id: str, parts: Sequence[ConfirmedPart],
                           writer_gen: int | None = None) -> Upload | None:
        """Record parts S3 holds; completes the upload if they finish it. None when the upload is
        gone or (with writer_gen) the writer was preempted."""
        result = await self.repo.confirm_parts(upload_id, parts, self.limits.upload_ttl, writer_gen)
        if result is None:
            return None
        if result.started_completing:
            await self.complete_in_request(result.upload)
        return result.upload

    async def declare_length(self, upload: Upload, length: int) -> Upload:
        """Set a deferred length once; completes the upload if its parts already cover it."""
        planned_with_length(upload, length, self.limits.max_upload_size)
        if upload.length is not None:
            return upload
        declared, over_quota = await self.repo.declare_length(upload.id, length, self.limits.upload_ttl)
        if over_quota:
            raise quota_exceeded(upload.quota_bytes)
        if declared is None:
            raise UploadError(ErrorCode.LENGTH_ALREADY_SET, "the upload length is already known")
        if declared.state is State.COMPLETING:
            await self.complete_in_request(declared)
        return declared

    async def complete_in_request(self, upload: Upload) -> None:
        """Run CompleteMultipartUpload for the caller that moved the upload to `completing`.

        Shielded so a client disconnect cannot split S3's answer from the row update; on a timeout
        or an unavailable S3 the row stays `completing` for the completion worker.
        """
        task = asyncio.ensure_future(self.finish(upload))
        try:
            await asyncio.wait_for(asyncio.shield(task), self.limits.complete_timeout)
        except TimeoutError:
            log.warning("completion of %s continues in the background", upload.id)
        except UploadError as exc:
            log.warning("completion of %s left for the worker: %s", upload.id, exc)

    async def finish(self, upload: Upload) -> State:
        """Complete a `completing` upload, holding its lease meanwhile; also what the worker calls."""
        lease = asyncio.create_task(self._hold_lease(upload.id))
        try:
            return await self._finish(upload)
        finally:
            lease.cancel()

    async def _hold_lease(self, upload_id: str) -> None:
        while True:
            await asyncio.sleep(self.limits.completion_retry_after / 3)
            try:
                await self.repo.renew_completion(upload_id)
            except UploadError as exc:  # the database is away: another instance may take over, harmlessly
                log.warning("could not renew the completion lease of %s: %s", upload_id, exc)

    async def take_over(self, upload: Upload) -> Upload:
        """A `completing` upload whose instance died: finish it now if its lease lapsed (one caller wins)."""
        claimed = await self.repo.claim_stale_completing(self.limits.completion_retry_after, 1, upload.id)
        if claimed:
            await self.complete_in_request(claimed[0])
        return upload

    async def _finish(self, upload: Upload) -> State:
        if upload.length == 0:
            return await self._finish_empty(upload)
        parts = await self.repo.confirmed_parts(upload.id)
        try:
            await self.store.complete(upload.key, upload.multipart_id or "", parts, upload.part_checksum)
        except CompleteRefused as refused:
            if refused.reason == "no_such_upload":
                return await self._after_no_such_upload(upload)
            return await self._after_invalid_part(upload, parts)
        await self.repo.finish_completing(upload.id, State.COMPLETED)
        log.info("upload %s completed", upload.id)
        return State.COMPLETED

    async def _finish_empty(self, upload: Upload) -> State:
        """A deferred upload declared empty: S3 refuses a multipart upload of no bytes (AWS and SeaweedFS
        fail a CompleteMultipartUpload without parts or with one empty part), so the object is an empty
        PutObject and the multipart upload is aborted. Repeating both is harmless (the lease's takeover)."""
        await self.store.put_empty(upload.key, content_type=md.content_type(upload.metadata),
                                   metadata=md.object_metadata(upload.id, upload.metadata),
                                   filename=md.filename(upload.metadata))
        if upload.multipart_id:
            try:
                await self.store.abort(upload.key, upload.multipart_id)
            except UploadError as exc:  # the lifecycle rule and the sweeper remove it later
                log.warning("abort after the empty completion of %s failed: %s", upload.id, exc)
        await self.repo.finish_completing(upload.id, State.COMPLETED)
        log.info("upload %s completed (empty)", upload.id)
        return State.COMPLETED

    async def _after_no_such_upload(self, upload: Upload) -> State:
        # Complete may have succeeded before a crash; some stores then answer NoSuchUpload on a retry.
        head = await self.store.head_object(upload.key)
        if head is not None and head.size == upload.length and head.metadata.get("upload-id") == upload.id:
            await self.repo.finish_completing(upload.id, State.COMPLETED)
            return State.COMPLETED
        await self.repo.finish_completing(upload.id, State.FAILED, "the multipart upload vanished before completion")
        return State.FAILED

    async def _after_invalid_part(self, upload: Upload, parts: list[ConfirmedPart]) -> State:
        """Re-list, re-record ETags and retry once; else reopen with the refused parts unconfirmed."""
        listed = await list_from(self.store, upload, [p.number for p in parts])
        # ListParts may not return checksums (SeaweedFS, moto): keep the recorded ones then.
        fresh = [ConfirmedPart(p.number, p.size, listed[p.number].etag, listed[p.number].checksum or p.checksum)
                 for p in parts if p.number in listed and listed[p.number].size == p.size]
        bad = sorted({p.number for p in parts} - {p.number for p in fresh})
        if not bad:
            try:
                await self.store.complete(upload.key, upload.multipart_id or "", fresh, upload.part_checksum)
            except CompleteRefused:
                bad = [p.number for p in parts]
            else:
                await self.repo.finish_completing(upload.id, State.COMPLETED)
                return State.COMPLETED
        await self.repo.reopen(upload.id, bad)
        return State.ACTIVE


class CompletionWorker:
    """Finishes uploads left in `completing` by a dead process or a request that ran out of time."""

    def __init__(self, repo: UploadRepository, completion: Completion, stale_after: float, batch: int = 20) -> None:
        self.repo = repo
        self.completion = completion
        self.stale_after = stale_after
        self.batch = batch

    async def run_once(self) -> int:
        claimed = await self.repo.claim_stale_completing(self.stale_after, self.batch)
        for upload in claimed:
            try:
                state = await self.completion.finish(upload)
                log.info("completion worker: upload %s is %s", upload.id, state.value)
            except UploadError as exc:  # S3 unavailable: the lease expires and a later run retries
                log.warning("completion worker: upload %s not finished: %s", upload.id, exc)
        return len(claimed)
