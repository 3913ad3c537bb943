"""Conformance of the S3 behaviours the gateway relies on (docs/architecture.md §7.3).

Every test runs against two real S3 servers: SeaweedFS (the `stack` fixture, what dev and tests use) and
moto in server mode. Calls the gateway makes go through its own adapter (`S3ObjectStore` over
`s3_client(settings)`), so these tests check our code paths; a plain botocore client only arranges
situations (uploading parts, as a browser with a presigned URL would) and reads objects back.

Where a server deviates from AWS, the test asserts the deviation explicitly and names it: that is what
the gateway has to tolerate (or what a test double cannot be trusted with).
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import aiohttp
import botocore.session
import pytest
import pytest_asyncio
from botocore.config import Config
from botocore.exceptions import ClientError

from gateway.config import Settings
from gateway.core.errors import ErrorCode, UploadError
from gateway.core.model import ConfirmedPart, PartChecksum
from gateway.core.ports import CompleteRefused, PartsPage
from gateway.s3.adapters import make_signer
from gateway.s3.client import s3_client
from gateway.s3.objects import S3ObjectStore
from gateway.s3.signed_requests import S3SignedRequests
from tests.support.moto import running_moto

# One event loop per module, so one aiobotocore client per server (creating one costs ~0.4 s).
pytestmark = pytest.mark.asyncio(loop_scope="module")

MiB = 1024 * 1024
SERVERS = ("seaweedfs", "moto")
MOTO_BUCKET = "conformance"


@dataclass(frozen=True)
class Server:
    name: str
    settings: Settings
    raw: Any  # botocore client: arranges situations, never stands in for a gateway call

    @property
    def bucket(self) -> str:
        return self.settings.s3_bucket


def _raw_client(settings: Settings) -> Any:
    return botocore.session.get_session().create_client(
        "s3", endpoint_url=settings.s3_endpoint_url, region_name=settings.s3_region,
        aws_access_key_id=settings.s3_access_key_id, aws_secret_access_key=settings.s3_secret_access_key,
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}, max_pool_connections=16,
                      retries={"total_max_attempts": 1}, request_checksum_calculation="when_required",
                      response_checksum_validation="when_required"),
    )


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """moto's S3 in server mode on 127.0.0.1 (its in-process mock does not work with aiobotocore)."""
    with running_moto() as endpoint:
        settings = Settings(s3_endpoint_url=endpoint, s3_bucket=MOTO_BUCKET, s3_access_key_id="testing",
                            s3_secret_access_key="testing")
        _raw_client(settings).create_bucket(Bucket=MOTO_BUCKET)
        yield endpoint


@pytest.fixture(scope="session", params=SERVERS)
def server(request: pytest.FixtureRequest) -> Server:
    if request.param == "seaweedfs":
        stack = request.getfixturevalue("stack")
        settings = Settings(s3_endpoint_url=stack.s3_endpoint_url, s3_bucket=stack.s3_bucket,
                            s3_region=stack.s3_region, s3_access_key_id=stack.s3_access_key_id,
                            s3_secret_access_key=stack.s3_secret_access_key)
    else:
        settings = Settings(s3_endpoint_url=request.getfixturevalue("moto_endpoint"), s3_bucket=MOTO_BUCKET,
                            s3_access_key_id="testing", s3_secret_access_key="testing")
    return Server(request.param, settings, _raw_client(settings))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def store(server: Server) -> AsyncIterator[S3ObjectStore]:
    async with s3_client(server.settings) as client, aiohttp.ClientSession() as http:
        raw = S3SignedRequests(http, make_signer(server.settings, server.settings.s3_endpoint_url), server.bucket)
        yield S3ObjectStore(client, server.bucket, raw)


# -- arranging ------------------------------------------------------------------------------------------


async def create(store: S3ObjectStore, *, metadata: dict[str, str] | None = None,
                 checksum: PartChecksum | None = None) -> tuple[str, str]:
    """CreateMultipartUpload the way the gateway does it; a fresh key per test."""
    key = f"conformance/{uuid.uuid4().hex}"
    upload_id = await store.create_multipart(key, content_type="application/octet-stream",
                                             metadata=metadata or {}, checksum=checksum)
    return key, upload_id


def put_part(server: Server, key: str, upload_id: str, number: int, body: bytes, **extra: Any) -> str:
    """What a client does with a presigned URL; returns the ETag."""
    response = server.raw.upload_part(Bucket=server.bucket, Key=key, UploadId=upload_id, PartNumber=number,
                                      Body=body, **extra)
    return str(response["ETag"])


def put_tiny_parts(server: Server, key: str, upload_id: str, numbers: Sequence[int]) -> None:
    """Tiny parts (ListParts does not care; only Complete wants every part but the last >= 5 MiB)."""
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: put_part(server, key, upload_id, n, str(n).encode()), numbers))


def stored(server: Server, key: str) -> bytes:
    return bytes(server.raw.get_object(Bucket=server.bucket, Key=key)["Body"].read())


def numbers(page: PartsPage) -> list[int]:
    return [p.number for p in page.parts]


async def page_through(store: S3ObjectStore, key: str, upload_id: str, max_parts: int) -> list[PartsPage]:
    """Follow NextPartNumberMarker while the listing is truncated, the way the core pages (uploads._list_from)."""
    pages: list[PartsPage] = []
    marker = 0
    while True:
        page = await store.list_parts(key, upload_id, marker, max_parts)
        pages.append(page)
        if not page.truncated or page.next_marker <= marker:
            return pages
        marker = page.next_marker


# -- ListParts ------------------------------------------------------------------------------------------


async def test_list_parts_probe_around_parts_1_2_10000(server: Server, store: S3ObjectStore) -> None:
    """The confirm probe: ListParts(marker=n-1, max-parts=3), accept only PartNumber == n
    (docs/architecture.md §3.2)."""
    key, upload_id = await create(store)
    put_part(server, key, upload_id, 1, b"1" * (5 * MiB))
    put_part(server, key, upload_id, 2, b"2" * (5 * MiB))
    put_part(server, key, upload_id, 10000, b"last")
    probe = {n: await store.list_parts(key, upload_id, n - 1, 3) for n in (1, 2, 10000)}

    assert numbers(probe[1]) == [1, 2, 10000]
    assert [p.size for p in probe[1].parts] == [5 * MiB, 5 * MiB, 4]
    assert numbers(probe[2]) == [2, 10000]
    assert not probe[1].truncated and not probe[2].truncated
    if server.name == "seaweedfs":
        assert numbers(probe[10000]) == [10000]
        assert probe[10000].parts[0].size == 4
        # SeaweedFS omits NextPartNumberMarker on a last page (the adapter reads 0).
        assert probe[1].next_marker == 0
    else:
        # moto bug: PartNumberMarker is used as an index into the list of parts (moto/s3/models.py
        # FakeMultipart.list_parts slices partlist[marker:marker + max]), so marker 9999 of a 3-part
        # upload lists nothing. AWS lists part 10000 here. Tests against moto need dense part numbers.
        assert numbers(probe[10000]) == []
        assert probe[1].next_marker == 10000


async def test_list_parts_order_of_1000_1001_10000(server: Server, store: S3ObjectStore) -> None:
    """docs/architecture.md: SeaweedFS lists parts by file name (`%04d_<uuid>.part`), so 10000 sorts before 1000."""
    key, upload_id = await create(store)
    put_tiny_parts(server, key, upload_id, [1, 2, 1000, 1001, 10000])
    everything = await store.list_parts(key, upload_id, 0, 1000)
    probe_1000 = await store.list_parts(key, upload_id, 999, 3)
    probe_1001 = await store.list_parts(key, upload_id, 1000, 3)
    paged = [numbers(page) for page in await page_through(store, key, upload_id, 3)]

    assert not everything.truncated
    if server.name == "seaweedfs":
        # Lexicographic, not numeric: "10000_..." < "1000_..." because '0' < '_'.
        assert numbers(everything) == [1, 2, 10000, 1000, 1001]
        # The probe for 1000 still finds it, but not first: accept PartNumber == n anywhere in the page.
        assert numbers(probe_1000) == [10000, 1000, 1001]
        assert numbers(probe_1001) == [1001]
        # Paging follows NextPartNumberMarker=10000 from a page ending in part 10000; SeaweedFS then
        # lists only numbers > 10000, i.e. nothing: parts 1000 and 1001 are never seen.
        assert paged == [[1, 2, 10000], []]
    else:
        assert numbers(everything) == [1, 2, 1000, 1001, 10000]
        # moto bug (marker used as a list index, see above): a sparse upload lists nothing past index 5.
        assert numbers(probe_1000) == [] and numbers(probe_1001) == []
        # moto bug: IsTruncated is "number of parts > NextPartNumberMarker" (5 > 1000 is false), so the
        # first page claims to be the last: 1001 and 10000 are never seen.
        assert paged == [[1, 2, 1000]]


async def test_reuploaded_part(server: Server, store: S3ObjectStore) -> None:
    """A part uploaded twice with different bytes (a retry, a second tab): what ListParts and Complete see."""
    key, upload_id = await create(store)
    first = put_part(server, key, upload_id, 1, b"a" * (5 * MiB))
    second = put_part(server, key, upload_id, 1, b"b" * (5 * MiB))
    tail = put_part(server, key, upload_id, 2, b"tail")
    assert first != second
    listed = (await store.list_parts(key, upload_id, 0, 1000)).parts

    if server.name == "seaweedfs":
        # SeaweedFS keeps every upload of a part and lists each (a stale duplicate), in random (uuid) order.
        assert Counter(p.number for p in listed) == {1: 2, 2: 1}
        assert {p.etag for p in listed if p.number == 1} == {first, second}
        # LastModified has 1 s resolution, so "prefer the newest duplicate" (uploads._better) cannot
        # order two uploads within the same second; the listing order (uuid) then decides.
        assert all(p.last_modified is not None and p.last_modified.microsecond == 0 for p in listed)
    else:
        assert [(p.number, p.etag) for p in listed] == [(1, second), (2, tail)]

    await store.complete(key, upload_id, [ConfirmedPart(1, 5 * MiB, second), ConfirmedPart(2, 4, tail)], None)
    assert stored(server, key) == b"b" * (5 * MiB) + b"tail"


async def test_more_than_1001_parts(server: Server, store: S3ObjectStore) -> None:
    """Reconcile, GET /parts and Complete must page beyond 1,000 parts (tusd#147)."""
    key, upload_id = await create(store)
    put_tiny_parts(server, key, upload_id, range(1, 1006))
    pages = await page_through(store, key, upload_id, 1000)

    assert [len(page.parts) for page in pages] == [1000, 5]
    assert pages[0].truncated and pages[0].next_marker == 1000
    assert not pages[1].truncated
    seen = [p for page in pages for p in page.parts]
    assert [p.number for p in seen] == list(range(1, 1006))  # each exactly once, in order
    assert all(p.size == len(str(p.number)) for p in seen)
    # Last page: SeaweedFS omits NextPartNumberMarker (the adapter reads 0), moto sends the last number.
    assert pages[1].next_marker == (0 if server.name == "seaweedfs" else 1005)
    # AWS caps MaxParts at 1,000; neither server does, so neither catches a caller relying on more.
    assert len((await store.list_parts(key, upload_id, 0, 10000)).parts) == 1005
    # The single-part probe past the first page.
    assert numbers(await store.list_parts(key, upload_id, 1002, 3)) == [1003, 1004, 1005]

    # An upload of exactly 10,000 parts has a part 10000; add it and page again.
    put_part(server, key, upload_id, 10000, b"last")
    pages = await page_through(store, key, upload_id, 1000)
    seen_numbers = [p.number for page in pages for p in page.parts]
    if server.name == "seaweedfs":
        # The first page is parts 1..999 then 10000 (file-name order) with NextPartNumberMarker=10000,
        # and the next page from 10000 is empty: parts 1000..1005 are lost to a pager that trusts it.
        assert seen_numbers == [*range(1, 1000), 10000]
        assert pages[0].truncated and pages[0].next_marker == 10000 and pages[1].parts == []
    else:
        assert seen_numbers == [*range(1, 1006), 10000]


# -- Complete -------------------------------------------------------------------------------------------


async def test_zero_part_complete_fails(server: Server, store: S3ObjectStore) -> None:
    """docs/architecture.md: why `Upload-Length: 0` is a PutObject, never a zero-part Complete."""
    key, upload_id = await create(store)
    with pytest.raises((CompleteRefused, UploadError)) as caught:
        await store.complete(key, upload_id, [], None)
    cause = caught.value.__cause__
    assert isinstance(cause, ClientError)
    if server.name == "seaweedfs":
        # SeaweedFS answers NoSuchUpload (filer_multipart.go: len(parts)==0) although the upload exists,
        # so the adapter reports CompleteRefused("no_such_upload") for an upload that is still there.
        assert isinstance(caught.value, CompleteRefused) and caught.value.reason == "no_such_upload"
        assert cause.response["Error"]["Code"] == "NoSuchUpload"
        assert (await store.list_parts(key, upload_id, 0, 3)).parts == []
    else:
        # moto (like AWS, ceph s3-tests test_multipart_upload_empty) answers 400 MalformedXML, which the
        # adapter reports as a transient outage: UploadError(STORAGE_UNAVAILABLE, retry_after=2).
        assert isinstance(caught.value, UploadError) and caught.value.code is ErrorCode.STORAGE_UNAVAILABLE
        assert cause.response["Error"]["Code"] == "MalformedXML"
    assert await store.head_object(key) is None


async def test_complete_retried_after_success(server: Server, store: S3ObjectStore) -> None:
    """A crash between Complete and the row update: the worker completes again."""
    key, upload_id = await create(store, metadata={"upload-id": "gw-retry"})
    etag = put_part(server, key, upload_id, 1, b"done")
    parts = [ConfirmedPart(1, 4, etag)]
    await store.complete(key, upload_id, parts, None)

    # Neither server answers NoSuchUpload (as MinIO and S3Mock do): SeaweedFS 4.48 and moto answer 200,
    # like AWS. The adapter returns normally; the core's HeadObject fallback is not exercised here.
    await store.complete(key, upload_id, parts, None)
    # Both replay the earlier success even for a different, wrong part list: a 200 on a retry says
    # nothing about the parts sent.
    await store.complete(key, upload_id, [ConfirmedPart(1, 4, '"0123456789abcdef0123456789abcdef"')], None)

    head = await store.head_object(key)
    assert head is not None and head.size == 4 and head.metadata.get("upload-id") == "gw-retry"
    assert stored(server, key) == b"done"
    # The multipart upload itself is gone: a late confirm sees NOT_FOUND (uploads._after_vanished_multipart).
    with pytest.raises(UploadError) as caught:
        await store.list_parts(key, upload_id, 0, 3)
    assert caught.value.code is ErrorCode.NOT_FOUND


async def test_complete_with_stale_etag(server: Server, store: S3ObjectStore) -> None:
    """A part re-uploaded after its ETag was recorded at confirm."""
    key, upload_id = await create(store)
    old = put_part(server, key, upload_id, 1, b"old bytes")
    recorded = (await store.list_parts(key, upload_id, 0, 3)).parts[0]  # what confirm records
    assert (recorded.number, recorded.etag) == (1, old)
    new = put_part(server, key, upload_id, 1, b"new bytes!")
    assert new != old
    confirmed = [ConfirmedPart(1, recorded.size, recorded.etag)]

    if server.name == "moto":
        with pytest.raises(CompleteRefused) as caught:
            await store.complete(key, upload_id, confirmed, None)
        assert caught.value.reason == "invalid_part"
        # The core's answer: re-list, re-record the ETag, complete once more.
        fresh = (await store.list_parts(key, upload_id, 0, 3)).parts
        assert [(p.number, p.etag) for p in fresh] == [(1, new)]
        await store.complete(key, upload_id, [ConfirmedPart(1, fresh[0].size, fresh[0].etag)], None)
        assert stored(server, key) == b"new bytes!"
    else:
        # SeaweedFS keeps both uploads of part 1 and completes with the one whose ETag was named:
        # no InvalidPart, the object holds the confirmed (older) bytes.
        await store.complete(key, upload_id, confirmed, None)
        assert stored(server, key) == b"old bytes"


async def test_complete_with_unknown_etag_is_invalid_part(server: Server, store: S3ObjectStore) -> None:
    """An ETag S3 never issued for that part: InvalidPart on both servers (SeaweedFS's only InvalidPart)."""
    key, upload_id = await create(store)
    put_part(server, key, upload_id, 1, b"bytes")
    with pytest.raises(CompleteRefused) as caught:
        await store.complete(key, upload_id, [ConfirmedPart(1, 5, '"0123456789abcdef0123456789abcdef"')], None)
    assert caught.value.reason == "invalid_part"
    assert await store.head_object(key) is None


async def test_complete_leaves_out_unplanned_part(server: Server, store: S3ObjectStore) -> None:
    """Parts past a declared length leave the plan and never go into Complete (docs/architecture.md §3.2)."""
    key, upload_id = await create(store)
    first = put_part(server, key, upload_id, 1, b"1" * (5 * MiB))
    second = put_part(server, key, upload_id, 2, b"end")
    put_part(server, key, upload_id, 10000, b"stray part")
    await store.complete(key, upload_id, [ConfirmedPart(1, 5 * MiB, first), ConfirmedPart(2, 3, second)], None)
    head = await store.head_object(key)
    assert head is not None and head.size == 5 * MiB + 3


async def test_checksum_upload_lists_and_completes(server: Server, store: S3ObjectStore) -> None:
    """`Upload-Part-Checksum: sha256`: the algorithm at create, each part's checksum in Complete (finding 9)."""
    key, upload_id = await create(store, checksum=PartChecksum.SHA256)
    body = b"checksummed part"
    digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
    etag = put_part(server, key, upload_id, 1, body, ChecksumSHA256=digest)
    listed = (await store.list_parts(key, upload_id, 0, 3)).parts
    # Neither server returns the part's ChecksumSHA256 in ListParts (AWS does): the checksum the
    # gateway sends at Complete must come from what it signed (signed_part_checksums), not the listing.
    assert [(p.number, p.etag, p.checksum) for p in listed] == [(1, etag, None)]

    without = [ConfirmedPart(1, len(body), etag, None)]
    if server.name == "seaweedfs":
        # SeaweedFS refuses a Complete that omits a part checksum: 400 InvalidRequest -> "invalid_part".
        with pytest.raises(CompleteRefused) as caught:
            await store.complete(key, upload_id, without, PartChecksum.SHA256)
        assert caught.value.reason == "invalid_part"
        assert isinstance(caught.value.__cause__, ClientError)
        assert caught.value.__cause__.response["Error"]["Code"] == "InvalidRequest"
        await store.complete(key, upload_id, [ConfirmedPart(1, len(body), etag, digest)], PartChecksum.SHA256)
    else:
        # moto does not check that Complete lists the checksums (AWS does).
        await store.complete(key, upload_id, without, PartChecksum.SHA256)
    assert stored(server, key) == body


# -- HeadObject, Abort ----------------------------------------------------------------------------------


async def test_head_object_after_complete_has_upload_id(server: Server, store: S3ObjectStore) -> None:
    """NoSuchUpload while completing is success only if HeadObject shows our id (docs/architecture.md §3.4)."""
    key = f"conformance/{uuid.uuid4().hex}"
    upload_id = await store.create_multipart(key, content_type="text/plain",
                                             metadata={"upload-id": "gw-123", "filetype": "text/plain"},
                                             checksum=None)
    assert await store.head_object(key) is None  # nothing before Complete
    etag = put_part(server, key, upload_id, 1, b"hello world")
    await store.complete(key, upload_id, [ConfirmedPart(1, 11, etag)], None)
    head = await store.head_object(key)
    assert head is not None
    assert head.size == 11
    assert head.metadata == {"upload-id": "gw-123", "filetype": "text/plain"}
    assert server.raw.head_object(Bucket=server.bucket, Key=key)["ContentType"] == "text/plain"


async def test_list_parts_on_aborted_upload_is_not_found(server: Server, store: S3ObjectStore) -> None:
    key, upload_id = await create(store)
    put_part(server, key, upload_id, 1, b"gone soon")
    await store.abort(key, upload_id)
    for multipart_id in (upload_id, "no-such-multipart-upload"):
        with pytest.raises(UploadError) as caught:
            await store.list_parts(key, multipart_id, 0, 3)
        assert caught.value.code is ErrorCode.NOT_FOUND


async def test_abort_twice_is_a_no_op(server: Server, store: S3ObjectStore) -> None:
    """The sweeper aborts terminated uploads once more; DELETE may be repeated."""
    key, upload_id = await create(store)
    put_part(server, key, upload_id, 1, b"bytes")
    await store.abort(key, upload_id)
    await store.abort(key, upload_id)  # no exception through the adapter on either server
    # What the adapter swallows: SeaweedFS answers the second abort with success, moto with NoSuchUpload.
    if server.name == "seaweedfs":
        server.raw.abort_multipart_upload(Bucket=server.bucket, Key=key, UploadId=upload_id)
    else:
        with pytest.raises(ClientError) as caught:
            server.raw.abort_multipart_upload(Bucket=server.bucket, Key=key, UploadId=upload_id)
        assert caught.value.response["Error"]["Code"] == "NoSuchUpload"
    with pytest.raises(UploadError) as gone:
        await store.list_parts(key, upload_id, 0, 3)
    assert gone.value.code is ErrorCode.NOT_FOUND
    assert await store.head_object(key) is None
