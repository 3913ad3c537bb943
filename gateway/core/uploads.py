"""Use cases on uploads: create, status, terminate, sign, confirm, reconcile, complete, download.

Pure Python over the ports in `gateway.core.ports`. Every state change is one call into the
repository (one short transaction there); no database work is held open across an S3 call.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from gateway.core import metadata as md
from gateway.core.completion import Completion
from gateway.core.errors import ErrorCode, UploadError
from gateway.core.limits import Limits
from gateway.core.listing import confirmed, find_parts, list_all, list_from
from gateway.core.model import (
    NO_ALLOWANCE,
    S3_MAX_PARTS,
    Allowance,
    ConfirmedPart,
    NewUpload,
    Owner,
    PartChecksum,
    State,
    Upload,
    new_upload_id,
    object_key,
    parts_needed,
    plan_part_size,
)
from gateway.core.ports import CreateHook, ListedPart, ObjectStore, PartSigner, PartToSign, UploadRepository
from gateway.core.rules import (
    RETRY_AFTER_COMPLETING,
    load_active,
    load_alive,
    load_owned,
    not_found,
    planned_with_length,
    quota_exceeded,
    quota_for,
    quota_headroom,
    size_limit,
)

log = logging.getLogger(__name__)

CREDENTIAL_MARGIN = timedelta(minutes=5)


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


class UploadService:
    def __init__(self, repo: UploadRepository, store: ObjectStore, signer: PartSigner, completion: Completion,
                 limits: Limits, create_hook: CreateHook | None = None) -> None:
        self.repo = repo
        self.store = store
        self.signer = signer
        self.completion = completion
        self.limits = limits
        self.create_hook = create_hook

    async def load(self, upload_id: str, owner: Owner) -> Upload:
        return await load_owned(self.repo, upload_id, owner)

    # -- create -------------------------------------------------------------------------------------

    async def create(self, owner: Owner, *, length: int | None, metadata: Mapping[str, str | None],
                     part_size_hint: int | None, part_checksum: PartChecksum | None,
                     partial: bool = False, allowance: Allowance = NO_ALLOWANCE) -> Upload:
        limits = self.limits
        largest = size_limit(limits, allowance)
        if length is not None and length > largest:
            raise UploadError(ErrorCode.MAX_SIZE_EXCEEDED, f"Upload-Length exceeds the maximum of {largest} bytes")
        quota = quota_for(limits, allowance)
        kept = md.validate_metadata(metadata)
        if self.create_hook is not None:
            # What a hook adds obeys the same limits.
            added = await self.create_hook.before_create(owner, length, kept, allowance.claims)
            kept = md.validate_metadata({**kept, **added})
        part_size = plan_part_size(length, limits.part_size, part_size_hint)
        if length is not None and parts_needed(length, part_size) > S3_MAX_PARTS:
            raise UploadError(ErrorCode.INVALID_PART_SIZE,
                              f"Upload-Part-Size is too small for {S3_MAX_PARTS:,} parts")
        upload_id = new_upload_id()
        key = object_key(limits.s3_key_prefix, upload_id)
        content_type = md.content_type(kept)
        s3_meta = md.object_metadata(upload_id, kept)
        if length == 0:
            # Complete at once; a zero-part CompleteMultipartUpload fails on AWS and SeaweedFS.
            await self.store.put_empty(key, content_type=content_type, metadata=s3_meta,
                                       filename=md.filename(kept))
            multipart_id, state = None, State.COMPLETED
        else:
            # S3 first: a failed INSERT then leaves only an upload the lifecycle rule removes.
            multipart_id = await self.store.create_multipart(
                key, content_type=content_type, metadata=s3_meta, checksum=part_checksum, filename=md.filename(kept))
            state = State.ACTIVE
        new = NewUpload(id=upload_id, owner=owner, length=length, part_size=part_size, part_checksum=part_checksum,
                        metadata=kept, bucket=limits.s3_bucket, key=key, multipart_id=multipart_id, state=state,
                        concat="partial" if partial else None, size_limit=largest,
                        quota_bytes=quota.max_bytes if quota else None,
                        quota_uploads=quota.max_uploads if quota else None)
        upload = await self.repo.insert(new, limits.upload_ttl, limits.upload_max_age)
        if upload is None:
            await (self.store.abort(key, multipart_id) if multipart_id else self.store.delete_object(key))
            assert quota is not None
            raise quota_exceeded(quota.max_bytes, quota.max_uploads)
        return upload

    # -- status -------------------------------------------------------------------------------------

    async def status(self, upload_id: str, owner: Owner) -> Upload:
        """HEAD: from Postgres, plus a best-effort reconcile that never fails the request."""
        upload = await load_alive(self.repo, upload_id, owner)
        if upload.needs_reconcile:
            try:
                upload = await asyncio.wait_for(self._reconcile(upload), self.limits.head_reconcile_timeout)
            except Exception as exc:  # HEAD must not fail because of S3 (tus-js-client restarts at byte 0)
                log.warning("reconcile on HEAD skipped for %s: %r", upload_id, exc)
        return upload

    async def list_parts(self, upload_id: str, owner: Owner) -> tuple[Upload, list[ConfirmedPart]]:
        upload = await load_alive(self.repo, upload_id, owner)
        if upload.needs_reconcile:
            upload = await self._reconcile(upload)
        return upload, await self.repo.confirmed_parts(upload.id)

    async def held_parts(self, upload_id: str, owner: Owner) -> list[ListedPart]:
        """What S3 holds for the upload right now, as S3 lists it (a short last part included, nothing
        recorded): for S3-style clients that resume by skipping the parts S3 has. A finished upload has
        no multipart upload any more: its confirmed parts are what it holds."""
        upload = await load_alive(self.repo, upload_id, owner)
        if upload.state is State.ACTIVE and upload.multipart_id:
            try:
                return await list_all(self.store, upload)
            except UploadError as exc:
                if exc.code is not ErrorCode.NOT_FOUND:
                    raise
                upload = await load_alive(self.repo, upload_id, owner)  # completed meanwhile
                if upload.state is State.ACTIVE:
                    raise UploadError(ErrorCode.UPLOAD_FAILED, "the S3 multipart upload no longer exists") from None
        return [ListedPart(p.number, p.size, p.etag, p.checksum) for p in await self.repo.confirmed_parts(upload.id)]

    # -- terminate ----------------------------------------------------------------------------------

    async def terminate(self, upload_id: str, owner: Owner) -> None:
        upload = await load_owned(self.repo, upload_id, owner)
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

    async def abort_multipart(self, upload_id: str, owner: Owner) -> None:
        """S3-style abort: ends an unfinished upload, and like S3 never deletes a finished object."""
        upload = await load_owned(self.repo, upload_id, owner)
        if upload.state is State.COMPLETED:
            raise UploadError(ErrorCode.UPLOAD_COMPLETED,
                              "the upload is complete; there is no multipart upload to abort")
        await self.terminate(upload_id, owner)

    # -- sign ---------------------------------------------------------------------------------------

    async def sign(self, upload_id: str, owner: Owner, requests: Sequence[PartRequest],
                   length: int | None, *, pin_length: bool = True, within_reach: bool = False) -> SignResult:
        """`within_reach`: for a client that signs ahead without knowing its file's size (Uppy 6's
        signRequest): the parts past what the upload could reach (its part plan, size limit or the
        owner's byte quota) are left out instead of refusing the request; the first must be within."""
        if len(requests) > self.limits.sign_batch_max:
            raise UploadError(ErrorCode.BATCH_TOO_LARGE, f"at most {self.limits.sign_batch_max} parts per request")
        upload = await load_active(self.repo, upload_id, owner)
        if upload.stash:
            raise UploadError(ErrorCode.PATH_CONFLICT,
                              "this upload has bytes from PATCH requests inside a part; continue with PATCH")
        # Everything is checked against the upload as the declared length makes it, before any write.
        planned = planned_with_length(upload, length, self.limits.max_upload_size)
        numbers = [r.number for r in requests]
        if numbers and planned.length == 0:
            raise UploadError(ErrorCode.UNKNOWN_PART, "an empty upload has no parts to sign")
        if len(set(numbers)) != len(numbers):
            raise UploadError(ErrorCode.INVALID_REQUEST, "a part number appears twice")
        headroom = await quota_headroom(self.repo, planned)
        if within_reach:
            reachable = [r for r in requests if planned.valid_part_number(r.number)
                         and (headroom is None or (r.number - 1) * planned.part_size < headroom)]
            requests = reachable or list(requests[:1])
            numbers = [r.number for r in requests]
        unknown = [n for n in numbers if not planned.valid_part_number(n)]
        if unknown:
            raise UploadError(ErrorCode.UNKNOWN_PART, f"no such part in this upload: {unknown[:10]}",
                              details={"parts": unknown})
        beyond = [n for n in numbers if headroom is not None and (n - 1) * planned.part_size >= headroom]
        if beyond:
            # A deferred upload: parts starting past what the owner's quota leaves could never be declared.
            raise quota_exceeded(planned.quota_bytes)
        already = [n for n in numbers if planned.is_confirmed(n)]
        if already:
            # A live URL could replace a confirmed part and break Complete.
            raise UploadError(ErrorCode.PART_CONFIRMED, f"parts already confirmed: {already[:10]}",
                              details={"parts": already})
        checksums = [self._checksum_header(planned, r) for r in requests]
        if length is not None:
            upload = await self.completion.declare_length(upload, length)
        limits = self.limits
        now = datetime.now(UTC)
        expires_at = now + timedelta(seconds=limits.presign_ttl)
        credentials_end = self.signer.credentials_expire_at()
        if credentials_end is not None:
            # A URL never outlives the credentials that signed it; the margin leaves the client time to
            # finish a PUT it starts at the last moment (half the time left for short-lived credentials).
            margin = min(CREDENTIAL_MARGIN, (credentials_end - now) / 2)
            expires_at = min(expires_at, credentials_end - margin)
        expires_in = int((expires_at - now).total_seconds())
        if expires_in <= 0:
            raise UploadError(ErrorCode.STORAGE_UNAVAILABLE, "signing credentials are about to expire", retry_after=5)
        ranges = [upload.part_range(n) for n in numbers]
        urls = self.signer.sign_parts(upload.key, upload.multipart_id or "", [
            PartToSign(n, size if pin_length else None, checksum)
            for n, (_, size), checksum in zip(numbers, ranges, checksums, strict=True)], expires_in=expires_in)
        signed = [SignedPartInfo(n, offset, size, part.url, part.headers)
                  for n, (offset, size), part in zip(numbers, ranges, urls, strict=True)]
        if numbers:
            s3_checksums = [(r.number, c[1]) for r, c in zip(requests, checksums, strict=True)
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

    # -- confirm ------------------------------------------------------------------------------------

    async def confirm(self, upload_id: str, owner: Owner, numbers: Iterable[int]) -> Upload:
        wanted = sorted(set(numbers))
        upload = await load_alive(self.repo, upload_id, owner)
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
            found = await find_parts(self.store, upload, pending)
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
        return await self._record(upload, [confirmed(found[n]) for n in pending])

    async def _after_vanished_multipart(self, upload_id: str, owner: Owner) -> Upload:
        """NoSuchUpload while confirming: usually a concurrent confirm just completed the upload."""
        upload = await load_alive(self.repo, upload_id, owner)
        if upload.state in (State.COMPLETING, State.COMPLETED):
            return upload
        raise UploadError(ErrorCode.UPLOAD_FAILED, "the S3 multipart upload no longer exists")

    async def complete_listed(self, upload_id: str, owner: Owner, numbers: Sequence[int]) -> Upload:
        """For protocols whose client says "these parts make the file" (S3-style complete): the
        length follows from the sizes S3 lists, then the usual confirm completes the upload.
        Returns the upload `completing` or `completed`; raises if these parts cannot finish it."""
        upload = await load_alive(self.repo, upload_id, owner)
        if upload.state is State.ACTIVE:
            upload = await self._complete_listed(upload, numbers)
        # A completion S3 refused for good: 410 upload_failed.
        done = await load_alive(self.repo, upload_id, owner)
        if done.state is State.ACTIVE:
            missing = [n for n in numbers if not done.is_confirmed(n)]
            if missing:  # S3 refused them at CompleteMultipartUpload; the upload was reopened
                raise UploadError(ErrorCode.PART_NOT_VISIBLE,
                                  f"S3 refused parts {missing[:10]} at completion; upload them again",
                                  details={"parts": missing}, retry_after=1)
            # An upload whose length was known before (e.g. created on /files): these parts are not all of it.
            raise UploadError(ErrorCode.LENGTH_CONFLICT,
                              f"parts 1..{max(numbers)} do not make the whole upload of {done.length} bytes")
        return done

    async def _complete_listed(self, upload: Upload, numbers: Sequence[int]) -> Upload:
        wanted = sorted(set(numbers))
        if wanted != list(range(1, len(wanted) + 1)):
            raise UploadError(ErrorCode.INVALID_REQUEST, "parts must be numbered 1..n without gaps")
        if upload.length is None:
            found = await find_parts(self.store, upload, wanted)
            missing = [n for n in wanted if n not in found]
            if missing:
                raise UploadError(ErrorCode.PART_NOT_VISIBLE, f"S3 does not hold parts {missing[:10]}",
                                  details={"parts": missing}, retry_after=1)
            sizes = [found[n].size for n in wanted]
            if any(size != upload.part_size for size in sizes[:-1]) or sizes[-1] > upload.part_size:
                raise UploadError(ErrorCode.SIZE_MISMATCH,
                                  f"every part but the last must be {upload.part_size} bytes",
                                  details={"parts": [{"number": n, "actual": found[n].size} for n in wanted]})
            upload = await self.completion.declare_length(upload, sum(sizes))
        return await self.confirm(upload.id, upload.owner, wanted)

    async def _record(self, upload: Upload, parts: Sequence[ConfirmedPart]) -> Upload:
        recorded = await self.completion.record_parts(upload.id, parts)
        if recorded is None:
            raise not_found()
        return recorded

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
            listed = await list_from(self.store, upload, candidates)
        except UploadError as exc:
            if exc.code is ErrorCode.NOT_FOUND:
                return upload  # the sweeper decides what a vanished multipart upload means
            raise
        parts = [confirmed(p) for n, p in sorted(listed.items()) if p.size == upload.part_range(n)[1]]
        if not parts:
            return upload
        return await self._record(upload, parts)

    # -- download -----------------------------------------------------------------------------------

    async def download(self, upload_id: str, owner: Owner) -> Download:
        upload = await load_alive(self.repo, upload_id, owner)
        if upload.state is State.COMPLETING:
            # The instance completing it may have died: take over once its lease lapsed.
            await self.completion.take_over(upload)
            upload = await load_alive(self.repo, upload_id, owner)
        if upload.state is State.COMPLETING:
            raise UploadError(ErrorCode.NOT_READY, "the upload is being completed", retry_after=RETRY_AFTER_COMPLETING)
        if upload.state is not State.COMPLETED:
            raise UploadError(ErrorCode.NOT_READY, "the upload is not complete yet")
        ttl = self.limits.download_ttl
        url = self.signer.sign_download(upload.key, filename=md.filename(upload.metadata),
                                        content_type=md.content_type(upload.metadata), expires_in=ttl)
        return Download(url, datetime.now(UTC) + timedelta(seconds=ttl))
