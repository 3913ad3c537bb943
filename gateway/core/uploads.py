"""Use cases on uploads: create, status, terminate, sign, confirm, reconcile, complete, download.

Pure Python over the ports in `gateway.core.ports`. Every state change is one call into the
repository (one short transaction there); no database work is held open across an S3 call.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone

from gateway.core import metadata as md
from gateway.core.errors import ErrorCode, UploadError
from gateway.core.model import (
    ConfirmedPart, Owner, PartChecksum, State, Upload, new_upload_id, object_key, plan_part_size,
)
from gateway.core.ports import (
    CompleteRefused, CreateHook, ListedPart, NewUpload, ObjectStore, PartSigner, Quota, UploadRepository,
)

log = logging.getLogger(__name__)

# Some stores list a part a moment after UploadPart returns (DESIGN §3.2): about 3 retries over 2 s.
LISTING_RETRY_DELAYS = (0.25, 0.75, 1.0)
PROBE_MAX_PARTS = 3
LIST_PAGE = 1000
CREDENTIAL_MARGIN = timedelta(minutes=5)
RETRY_AFTER_COMPLETING = 5


@dataclass(frozen=True)
class Limits:
    max_upload_size: int
    part_size: int
    upload_ttl: int
    upload_max_age: int
    presign_ttl: int
    download_ttl: int
    sign_batch_max: int
    key_prefix: str
    bucket: str
    complete_timeout: float
    head_reconcile_timeout: float
    reconcile_interval: float
    quota: Quota | None = None


@dataclass(frozen=True)
class PartRequest:
    number: int
    checksum: str | None = None


@dataclass(frozen=True)
class SignedPartInfo:
    number: int
    offset: int
    length: int
    url: str
    headers: dict[str, str]


@dataclass(frozen=True)
class SignResult:
    upload: Upload
    expires_at: datetime
    expires_in: int
    parts: list[SignedPartInfo]


@dataclass(frozen=True)
class Download:
    url: str
    expires_at: datetime


CHECKSUM_HEADERS = {
    PartChecksum.MD5: "Content-MD5",
    PartChecksum.CRC32C: "x-amz-checksum-crc32c",
    PartChecksum.SHA256: "x-amz-checksum-sha256",
}


def _not_found() -> UploadError:
    return UploadError(ErrorCode.NOT_FOUND, "no such upload")


class UploadService:
    def __init__(self, repo: UploadRepository, store: ObjectStore, signer: PartSigner, limits: Limits,
                 create_hook: CreateHook | None = None) -> None:
        self.repo = repo
        self.store = store
        self.signer = signer
        self.limits = limits
        self.create_hook = create_hook

    # -- lookup -------------------------------------------------------------------------------------

    async def load(self, upload_id: str, owner: Owner) -> Upload:
        upload = await self.repo.get(upload_id)
        # Another owner's upload is indistinguishable from a missing one.
        if upload is None or upload.owner != owner:
            raise _not_found()
        return upload

    @staticmethod
    def ensure_alive(upload: Upload) -> None:
        """Terminated, expired and failed uploads are tombstones: 410 for everything but DELETE."""
        if upload.state is State.TERMINATED:
            raise UploadError(ErrorCode.GONE, "the upload was terminated")
        if upload.state is State.EXPIRED or (upload.state is State.ACTIVE and upload.is_expired):
            raise UploadError(ErrorCode.UPLOAD_EXPIRED, "the upload expired")
        if upload.state is State.FAILED:
            raise UploadError(ErrorCode.UPLOAD_FAILED, f"the upload failed: {upload.failure_reason}")

    async def _load_active(self, upload_id: str, owner: Owner) -> Upload:
        upload = await self.load(upload_id, owner)
        self.ensure_alive(upload)
        if upload.state is not State.ACTIVE:
            raise UploadError(ErrorCode.UPLOAD_COMPLETED, "the upload is complete")
        return upload

    # -- create -------------------------------------------------------------------------------------

    async def create(self, owner: Owner, *, length: int | None, metadata_header: str | None,
                     part_size_hint: int | None, part_checksum: PartChecksum | None,
                     partial: bool = False) -> Upload:
        limits = self.limits
        if length is not None and length > limits.max_upload_size:
            raise UploadError(ErrorCode.MAX_SIZE_EXCEEDED,
                              f"Upload-Length exceeds the maximum of {limits.max_upload_size} bytes")
        metadata = md.parse_metadata(metadata_header)
        if self.create_hook is not None:
            metadata = {**metadata, **await self.create_hook.before_create(owner, length, metadata)}
            metadata_header = md.encode_metadata(metadata)
            md.parse_metadata(metadata_header)  # what a hook adds obeys the same limits
        part_size = plan_part_size(length, limits.part_size, part_size_hint)
        if length is not None and -(-length // part_size) > 10_000:
            raise UploadError(ErrorCode.INVALID_PART_SIZE, "Upload-Part-Size is too small for 10,000 parts")
        upload_id = new_upload_id()
        key = object_key(limits.key_prefix, upload_id)
        content_type = md.content_type(metadata)
        s3_meta = {"upload-id": upload_id, **md.s3_user_metadata(metadata)}
        if length == 0:
            # Complete at once; a zero-part CompleteMultipartUpload fails on AWS and SeaweedFS.
            await self.store.put_empty(key, content_type=content_type, metadata=s3_meta)
            multipart_id, state = None, State.COMPLETED
        else:
            # S3 first: a failed INSERT then leaves only an upload the lifecycle rule removes.
            multipart_id = await self.store.create_multipart(
                key, content_type=content_type, metadata=s3_meta, checksum=part_checksum)
            state = State.ACTIVE
        new = NewUpload(id=upload_id, owner=owner, length=length, part_size=part_size, part_checksum=part_checksum,
                        metadata=metadata, metadata_header=md.encode_metadata(metadata), bucket=limits.bucket,
                        key=key, multipart_id=multipart_id, state=state, concat="partial" if partial else None)
        upload = await self.repo.insert(new, limits.upload_ttl, limits.upload_max_age, limits.quota)
        if upload is None:
            await (self.store.abort(key, multipart_id) if multipart_id else self.store.delete_object(key))
            quota = limits.quota
            assert quota is not None
            raise UploadError(ErrorCode.QUOTA_EXCEEDED,
                              f"at most {quota.max_uploads} active uploads and {quota.max_bytes} declared bytes "
                              "per owner; finish or delete some first")
        return upload

    # -- status -------------------------------------------------------------------------------------

    async def status(self, upload_id: str, owner: Owner) -> Upload:
        """HEAD: from Postgres, plus a best-effort reconcile that never fails the request."""
        upload = await self.load(upload_id, owner)
        self.ensure_alive(upload)
        if upload.needs_reconcile:
            try:
                upload = await asyncio.wait_for(self._reconcile(upload), self.limits.head_reconcile_timeout)
            except Exception as exc:  # HEAD must not fail because of S3 (tus-js-client restarts at byte 0)
                log.warning("reconcile on HEAD skipped for %s: %r", upload_id, exc)
        return upload

    async def list_parts(self, upload_id: str, owner: Owner) -> tuple[Upload, list[ConfirmedPart]]:
        upload = await self.load(upload_id, owner)
        self.ensure_alive(upload)
        if upload.needs_reconcile:
            upload = await self._reconcile(upload)
        return upload, await self.repo.confirmed_parts(upload.id)

    # -- terminate ----------------------------------------------------------------------------------

    async def terminate(self, upload_id: str, owner: Owner) -> None:
        upload = await self.load(upload_id, owner)
        if upload.state is State.TERMINATED:
            return  # a repeated DELETE after a lost response
        ended = await self.repo.terminate(upload_id)
        if ended is None:
            raise UploadError(ErrorCode.COMPLETING, "the upload is being completed; try again",
                              retry_after=RETRY_AFTER_COMPLETING)
        try:
            if upload.state is State.COMPLETED:
                await self.store.delete_object(upload.key)
            elif upload.multipart_id:
                await self.store.abort(upload.key, upload.multipart_id)
        except UploadError as exc:  # the row is a tombstone now; the sweeper aborts again later
            log.warning("cleanup after DELETE of %s failed: %s", upload_id, exc)

    # -- sign ---------------------------------------------------------------------------------------

    async def sign(self, upload_id: str, owner: Owner, requests: Sequence[PartRequest],
                   length: int | None, *, pin_length: bool = True) -> SignResult:
        if len(requests) > self.limits.sign_batch_max:
            raise UploadError(ErrorCode.BATCH_TOO_LARGE, f"at most {self.limits.sign_batch_max} parts per request")
        upload = await self._load_active(upload_id, owner)
        if upload.stash:
            raise UploadError(ErrorCode.PATH_CONFLICT,
                              "this upload has bytes from PATCH requests inside a part; continue with PATCH")
        # Everything is checked against the upload as the declared length makes it, before any write.
        planned = self.planned_with_length(upload, length)
        numbers = [r.number for r in requests]
        if len(set(numbers)) != len(numbers):
            raise UploadError(ErrorCode.INVALID_REQUEST, "a part number appears twice")
        unknown = [n for n in numbers if not planned.valid_part_number(n)]
        if unknown:
            raise UploadError(ErrorCode.UNKNOWN_PART, f"no such part in this upload: {unknown[:10]}",
                              details={"parts": unknown})
        confirmed = [n for n in numbers if planned.is_confirmed(n)]
        if confirmed:
            # A live URL could replace a confirmed part and break Complete.
            raise UploadError(ErrorCode.PART_CONFIRMED, f"parts already confirmed: {confirmed[:10]}",
                              details={"parts": confirmed})
        checksums = [self._checksum_header(planned, r) for r in requests]
        if length is not None:
            upload = await self.declare_length(upload, length)
        limits = self.limits
        now = datetime.now(timezone.utc)
        expires_at = now + timedelta(seconds=limits.presign_ttl)
        credentials_end = self.signer.credentials_expire_at()
        if credentials_end is not None:
            expires_at = min(expires_at, credentials_end - CREDENTIAL_MARGIN)
        expires_in = int((expires_at - now).total_seconds())
        if expires_in <= 0:
            raise UploadError(ErrorCode.STORAGE_UNAVAILABLE, "signing credentials are about to expire", retry_after=5)
        signed = []
        for request, checksum in zip(requests, checksums):
            offset, size = upload.part_range(request.number)
            part = self.signer.sign_part(upload.key, upload.multipart_id or "", request.number,
                                         size if pin_length else None,
                                         checksum_header=checksum, expires_in=expires_in)
            signed.append(SignedPartInfo(request.number, offset, size, part.url, part.headers))
        if numbers:
            s3_checksums = [(r.number, c[1]) for r, c in zip(requests, checksums)
                            if c is not None and upload.part_checksum and upload.part_checksum.is_s3_algorithm]
            recorded = await self.repo.record_signed(upload.id, max(numbers), expires_at, limits.upload_ttl,
                                                     s3_checksums)
            if recorded is None:
                raise UploadError(ErrorCode.UPLOAD_NOT_ACTIVE, "the upload is no longer active")
            upload = recorded
        return SignResult(upload, expires_at, expires_in, signed)

    @staticmethod
    def _checksum_header(upload: Upload, request: PartRequest) -> tuple[str, str] | None:
        algorithm = upload.part_checksum
        if algorithm is None:
            if request.checksum is not None:
                raise UploadError(ErrorCode.INVALID_REQUEST,
                                  "this upload declared no part checksum algorithm (Upload-Part-Checksum)")
            return None
        if request.checksum is None:
            raise UploadError(ErrorCode.CHECKSUM_REQUIRED,
                              f"part {request.number} needs its {algorithm.value} checksum (base64)")
        try:
            digest = base64.b64decode(request.checksum, validate=True)
        except (binascii.Error, ValueError):
            digest = b""
        if len(digest) != algorithm.digest_size:
            raise UploadError(ErrorCode.INVALID_REQUEST,
                              f"part {request.number}: checksum is not a base64 {algorithm.value} digest")
        return CHECKSUM_HEADERS[algorithm], request.checksum

    def planned_with_length(self, upload: Upload, length: int | None) -> Upload:
        """The upload as it will be once `length` is declared; raises if the declaration is refused.
        Nothing is written, so a request can be checked whole before it changes anything."""
        if length is None or upload.length == length:
            return upload
        if upload.length is not None:
            raise UploadError(ErrorCode.LENGTH_ALREADY_SET, "the upload length is already known")
        ceiling = min(self.limits.max_upload_size, upload.max_length)
        if length > ceiling:
            raise UploadError(ErrorCode.MAX_SIZE_EXCEEDED, f"length exceeds the maximum of {ceiling} bytes")
        if length < upload.offset:
            raise UploadError(ErrorCode.LENGTH_CONFLICT, "length is smaller than the confirmed offset")
        # Every confirmed part must still fit the plan (all are full-size until the length is known).
        confirmed_ends = [n * upload.part_size for n in upload.confirmed_beyond_prefix]
        if any(end > length for end in confirmed_ends):
            raise UploadError(ErrorCode.LENGTH_CONFLICT, "confirmed parts lie past that length")
        if length == 0:
            raise UploadError(ErrorCode.INVALID_UPLOAD_LENGTH, "a deferred upload cannot end empty here")
        return replace(upload, length=length)

    async def declare_length(self, upload: Upload, length: int) -> Upload:
        self.planned_with_length(upload, length)
        if upload.length is not None:
            return upload
        declared = await self.repo.declare_length(upload.id, length, self.limits.upload_ttl)
        if declared is None:
            raise UploadError(ErrorCode.LENGTH_ALREADY_SET, "the upload length is already known")
        if declared.state is State.COMPLETING:
            await self.complete_in_request(declared)
        return declared

    # -- confirm ------------------------------------------------------------------------------------

    async def confirm(self, upload_id: str, owner: Owner, numbers: Iterable[int]) -> Upload:
        wanted = sorted(set(numbers))
        upload = await self.load(upload_id, owner)
        self.ensure_alive(upload)
        if upload.state in (State.COMPLETING, State.COMPLETED):
            return upload  # idempotent: offset == length
        unknown = [n for n in wanted if not upload.valid_part_number(n)]
        if unknown or not wanted:
            raise UploadError(ErrorCode.UNKNOWN_PART, f"no such part in this upload: {unknown[:10]}",
                              details={"parts": unknown})
        pending = [n for n in wanted if not upload.is_confirmed(n)]
        if not pending:
            return upload
        try:
            found = await self._find_parts(upload, pending)
        except UploadError as exc:
            if exc.code is not ErrorCode.NOT_FOUND:
                raise
            return await self._after_vanished_multipart(upload_id, owner)
        missing = [n for n in pending if n not in found]
        if missing:
            raise UploadError(ErrorCode.PART_NOT_VISIBLE, f"S3 does not hold parts {missing[:10]} yet",
                              details={"parts": missing}, retry_after=1)
        wrong = [n for n in pending if found[n].size != upload.part_range(n)[1]]
        if wrong:
            raise UploadError(ErrorCode.SIZE_MISMATCH,
                              f"parts {wrong[:10]} do not have their planned size",
                              details={"parts": [{"number": n, "expected": upload.part_range(n)[1],
                                                  "actual": found[n].size} for n in wrong]})
        return await self._record(upload, [self._confirmed(found[n]) for n in pending])

    async def _after_vanished_multipart(self, upload_id: str, owner: Owner) -> Upload:
        """NoSuchUpload while confirming: usually a concurrent confirm just completed the upload."""
        upload = await self.load(upload_id, owner)
        self.ensure_alive(upload)
        if upload.state in (State.COMPLETING, State.COMPLETED):
            return upload
        raise UploadError(ErrorCode.UPLOAD_FAILED, "the S3 multipart upload no longer exists")

    async def complete_listed(self, upload_id: str, owner: Owner, numbers: Sequence[int]) -> Upload:
        """For protocols whose client says "these parts make the file" (S3-style complete): the
        length follows from the sizes S3 lists, then the usual confirm completes the upload."""
        upload = await self.load(upload_id, owner)
        self.ensure_alive(upload)
        if upload.state is not State.ACTIVE:
            return upload
        wanted = sorted(set(numbers))
        if wanted != list(range(1, len(wanted) + 1)):
            raise UploadError(ErrorCode.INVALID_REQUEST, "parts must be numbered 1..n without gaps")
        if upload.length is None:
            found = await self._find_parts(upload, wanted)
            missing = [n for n in wanted if n not in found]
            if missing:
                raise UploadError(ErrorCode.PART_NOT_VISIBLE, f"S3 does not hold parts {missing[:10]}",
                                  details={"parts": missing}, retry_after=1)
            sizes = [found[n].size for n in wanted]
            if any(size != upload.part_size for size in sizes[:-1]) or sizes[-1] > upload.part_size:
                raise UploadError(ErrorCode.SIZE_MISMATCH,
                                  f"every part but the last must be {upload.part_size} bytes",
                                  details={"parts": [{"number": n, "actual": found[n].size} for n in wanted]})
            upload = await self.declare_length(upload, sum(sizes))
        return await self.confirm(upload_id, owner, wanted)

    @staticmethod
    def _confirmed(part: ListedPart) -> ConfirmedPart:
        return ConfirmedPart(part.number, part.size, part.etag, part.checksum)

    async def _record(self, upload: Upload, parts: Sequence[ConfirmedPart]) -> Upload:
        result = await self.repo.confirm_parts(upload.id, parts, self.limits.upload_ttl)
        if result is None:
            raise _not_found()
        if result.started_completing:
            await self.complete_in_request(result.upload)
            return result.upload
        return result.upload

    async def _find_parts(self, upload: Upload, wanted: Sequence[int]) -> dict[int, ListedPart]:
        """ListParts from just before the first wanted part, paging until past the last (DESIGN §3.2)."""
        found: dict[int, ListedPart] = {}
        for delay in (*LISTING_RETRY_DELAYS, None):
            remaining = [n for n in wanted if n not in found]
            found.update(await self._list_from(upload, remaining))
            if all(n in found for n in wanted) or delay is None:
                return found
            await asyncio.sleep(delay)
        return found

    async def _list_from(self, upload: Upload, wanted: Sequence[int]) -> dict[int, ListedPart]:
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
            page = await self.store.list_parts(upload.key, upload.multipart_id or "", marker, page_size)
            progress = False
            for part in page.parts:
                if part.number in want and self._better(upload, part, found.get(part.number)):
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

    @staticmethod
    def _better(upload: Upload, part: ListedPart, current: ListedPart | None) -> bool:
        """A store may list stale duplicates of a part: prefer the planned size, then the newest."""
        if current is None:
            return True
        planned = upload.part_range(part.number)[1]
        if (part.size == planned) != (current.size == planned):
            return part.size == planned
        return (part.last_modified or datetime.min.replace(tzinfo=timezone.utc)) >= (
            current.last_modified or datetime.min.replace(tzinfo=timezone.utc))

    # -- reconcile ----------------------------------------------------------------------------------

    async def _reconcile(self, upload: Upload) -> Upload:
        """Find signed parts S3 holds that nobody confirmed (a lost confirm), at most once per interval."""
        if not await self.repo.claim_reconcile(upload.id, self.limits.reconcile_interval):
            return upload
        candidates = [n for n in range(upload.prefix_parts + 1, upload.signed_max_part + 1)
                      if upload.valid_part_number(n) and not upload.is_confirmed(n)]
        if not candidates:
            return upload
        try:
            listed = await self._list_from(upload, candidates)
        except UploadError as exc:
            if exc.code is ErrorCode.NOT_FOUND:
                return upload  # the sweeper decides what a vanished multipart upload means
            raise
        parts = [self._confirmed(p) for n, p in sorted(listed.items()) if p.size == upload.part_range(n)[1]]
        if not parts:
            return upload
        return await self._record(upload, parts)

    # -- complete -----------------------------------------------------------------------------------

    async def complete_in_request(self, upload: Upload) -> None:
        """Run CompleteMultipartUpload for the caller that moved the upload to `completing`.

        Shielded so a client disconnect cannot split S3's answer from the row update; on a timeout
        or an unavailable S3 the row stays `completing` for the completion worker.
        """
        task = asyncio.ensure_future(self.finish(upload))
        try:
            await asyncio.wait_for(asyncio.shield(task), self.limits.complete_timeout)
        except asyncio.TimeoutError:
            log.warning("completion of %s continues in the background", upload.id)
        except UploadError as exc:
            log.warning("completion of %s left for the worker: %s", upload.id, exc)

    async def finish(self, upload: Upload) -> State:
        """Complete a `completing` upload; also what the completion worker calls."""
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
        listed = await self._list_from(upload, [p.number for p in parts])
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

    # -- download -----------------------------------------------------------------------------------

    async def download(self, upload_id: str, owner: Owner) -> Download:
        upload = await self.load(upload_id, owner)
        self.ensure_alive(upload)
        if upload.state is State.COMPLETING:
            raise UploadError(ErrorCode.NOT_READY, "the upload is being completed", retry_after=RETRY_AFTER_COMPLETING)
        if upload.state is not State.COMPLETED:
            raise UploadError(ErrorCode.NOT_READY, "the upload is not complete yet")
        ttl = self.limits.download_ttl
        url = self.signer.sign_download(upload.key, filename=md.filename(upload.metadata),
                                        content_type=md.content_type(upload.metadata), expires_in=ttl)
        return Download(url, datetime.now(timezone.utc) + timedelta(seconds=ttl))
