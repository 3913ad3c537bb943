"""Property-based: random request sequences by three owners against one real gateway (Postgres + SeaweedFS),
with small quotas (3 active uploads, 30 MiB declared per owner), and invariants checked after every step:

- no 5xx, ever;
- a request by one owner changes no row of another owner (`uploads`, `upload_parts`, `upload_stash`,
  `signed_part_checksums`), and naming another owner's upload is 404 (400 `invalid_concat` as a partial);
- per owner: active uploads <= the upload quota, declared bytes of active uploads <= the byte quota;
- an upload's offset never decreases (as Postgres holds it, and as 2xx answers report it);
- a completed upload's object in S3 holds exactly the bytes that were sent (sha256).

Every byte sent for an upload, by any path (PATCH, presigned PUT, Companion), is `content(id)[start:end]`,
so the object of a completed upload must equal `content(id)[:length]` however its bytes arrived.

Operations: tus create (known, deferred, partial, large), PATCH chunks (sometimes at a stale offset or past
the end), length declarations (tus PATCH and the sign request), sign + PUT + confirm of parts, HEAD,
DELETE, concatenation, Companion create and complete. Each example runs a fresh gateway with fresh owners.
Examples: `GATEWAY_PROPERTY_EXAMPLES` (default 40, ~350 steps in all, about 45 s).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from hypothesis import HealthCheck, event, example, given, note, settings
from hypothesis import strategies as st
from yarl import URL

from gateway.db.repository import PgUploadRepository
from gateway.embedded import StackInfo
from tests.support import MiB
from tests.support.gateway import Gateway, make_settings, running
from tests.support.storage import stored_bytes
from tests.support.tokens import auth

PART = 5 * MiB
MAX_UPLOADS = 3
MAX_BYTES = 30 * MiB
OWNERS = 3
OCTETS = "application/offset+octet-stream"
EXAMPLES = int(os.environ.get("GATEWAY_PROPERTY_EXAMPLES", "40"))
# Every upload's bytes are a window of this buffer (cyclic), starting at an offset its id picks.
_BASE = random.Random(20240601).randbytes(PART + 4099)


def content(upload_id: str, start: int, end: int) -> bytes:
    shift = int.from_bytes(hashlib.sha256(upload_id.encode()).digest()[:4], "big")
    out = bytearray()
    position = start
    while position < end:
        at = (shift + position) % len(_BASE)
        piece = _BASE[at:at + (end - position)]
        out += piece
        position += len(piece)
    return bytes(out)


# -- operations ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Create:
    actor: int
    kind: str  # small | two_parts | deferred | partial | big
    size: int


@dataclass(frozen=True)
class Patch:
    actor: int
    target: tuple[bool, int]
    size: str  # small | part | end | past_end
    small: int
    offset: str  # current | stale


@dataclass(frozen=True)
class Declare:
    actor: int
    target: tuple[bool, int]
    length: str  # offset | offset+small | part+small | big | huge
    small: int
    via: str  # patch | sign


@dataclass(frozen=True)
class Direct:
    actor: int
    target: tuple[bool, int]
    part: int  # 0: the next part after the prefix


@dataclass(frozen=True)
class Head:
    actor: int
    target: tuple[bool, int]


@dataclass(frozen=True)
class Delete:
    actor: int
    target: tuple[bool, int]


@dataclass(frozen=True)
class Concat:
    actor: int
    targets: tuple[tuple[bool, int], ...]


@dataclass(frozen=True)
class CompanionCreate:
    actor: int


@dataclass(frozen=True)
class CompanionComplete:
    actor: int
    target: tuple[bool, int]
    size: int


Operation = Create | Patch | Declare | Direct | Head | Delete | Concat | CompanionCreate | CompanionComplete

# Each operation is drawn from a seed with fixed weights. (Drawn field by field, ~30 derandomized examples
# kept to a handful of shapes: the owner's own length declarations, the quota's edge, hardly ever came up.)
# Hypothesis still chooses and shrinks the sequence: a failure shrinks to the fewest operations.
WEIGHTS = {"create": 10, "patch": 18, "declare": 12, "direct": 10, "head": 6, "delete": 5, "concat": 6,
           "companion_create": 5, "companion_complete": 8}


def operation(seed: int) -> Operation:
    r = random.Random(seed)
    kind = r.choices(list(WEIGHTS), list(WEIGHTS.values()))[0]
    # Owner 0 does most of the work (and meets its quotas); the others are mostly intruders.
    actor = r.choices(range(OWNERS), [6, 2, 2])[0]

    def target() -> tuple[bool, int]:
        """(own, index): mostly one of the actor's own uploads, else any upload (often another owner's)."""
        return r.random() < 0.8, r.randrange(41)

    small = r.randint(1, 300)
    if kind == "create":
        return Create(actor, r.choice(["small", "small", "two_parts", "deferred", "deferred", "partial", "big"]),
                      r.choice([0, small]))
    if kind == "patch":
        return Patch(actor, target(), r.choice(["small", "small", "part", "end", "past_end"]), small,
                     r.choice(["current", "current", "current", "stale"]))
    if kind == "declare":
        return Declare(actor, target(), r.choice(["offset", "offset+small", "part+small", "big", "huge"]), small,
                       r.choice(["patch", "sign"]))
    if kind == "direct":
        return Direct(actor, target(), r.choice([0, 0, 0, 1, 2, 3]))
    if kind == "head":
        return Head(actor, target())
    if kind == "delete":
        return Delete(actor, target())
    if kind == "concat":
        return Concat(actor, tuple(target() for _ in range(r.randint(1, 3))))
    if kind == "companion_create":
        return CompanionCreate(actor)
    return CompanionComplete(actor, target(), small)


seeds = st.integers(0, 2**32 - 1)
# Every sequence starts by creating something to act on.
sequences = st.tuples(st.lists(seeds.map(lambda seed: Create(seed % OWNERS if seed % 3 == 0 else 0,
                                                              ["small", "deferred", "partial"][seed // 3 % 3],
                                                              seed // 9 % 301)), min_size=1, max_size=3),
                      st.lists(seeds.map(operation), min_size=3, max_size=14)).map(lambda t: [*t[0], *t[1]])


# -- the model --------------------------------------------------------------------------------------------


@dataclass
class Known:
    id: str
    owner: int
    key: str
    partials: tuple[str, ...] = ()  # a final concatenation: its partials' ids
    verified: bool = False  # S3 bytes checked once completed
    offset: int = 0  # the highest offset seen
    # As of the last step (refreshed after each one).
    state: str = "active"
    length: int | None = None
    partial: bool = False


@dataclass
class World:
    gw: Gateway
    db: asyncpg.Pool
    repo: PgUploadRepository
    s3: Any
    subjects: list[str]
    uploads: list[Known] = field(default_factory=list)
    lengths: dict[str, int] = field(default_factory=dict)  # completed uploads' lengths, for finals

    def headers(self, actor: int, **extra: str) -> dict[str, str]:
        return auth(self.subjects[actor], **extra)

    def pick(self, actor: int, target: tuple[bool, int], op: Any = None) -> Known | None:
        """One of the actor's own uploads (those the operation makes sense on, if any), or any upload."""
        own, index = target
        mine = [k for k in self.uploads if k.owner == actor]
        fitting = [k for k in mine if _fits(op, k)]
        candidates = (fitting or mine) if own and mine else self.uploads
        return candidates[index % len(candidates)] if candidates else None

    def expected(self, upload: Known, length: int) -> bytes:
        if upload.partials:
            pieces = [content(p, 0, self.lengths[p]) for p in upload.partials]
            return b"".join(pieces)
        return content(upload.id, 0, length)

    async def track(self, location_or_id: str, owner: int, partials: tuple[str, ...] = ()) -> Known:
        upload_id = location_or_id.rstrip("/").rsplit("/", 1)[-1]
        row = await self.db.fetchrow("select s3_key, state, length, concat from uploads where id = $1", upload_id)
        known = Known(upload_id, owner, row["s3_key"], partials, state=row["state"], length=row["length"],
                      partial=row["concat"] == "partial")
        self.uploads.append(known)
        return known


def _fits(op: Any, known: Known) -> bool:
    """Whether an operation makes sense on an upload (its owner's requests are steered there)."""
    if isinstance(op, Declare):
        return known.state == "active" and known.length is None
    if isinstance(op, Patch | Direct | CompanionComplete):
        return known.state == "active"
    if isinstance(op, Concat):
        return known.partial and known.state == "completed"
    return True


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def code(self) -> str | None:
        try:
            return str(json.loads(self.body)["error"]["code"])
        except (ValueError, KeyError, TypeError):
            return None


async def send(world: World, method: str, url: str | URL, *, headers: dict[str, str] | None = None,
               data: bytes | None = None, json_body: Any = None) -> Answer:
    async with world.gw.http.request(method, url, headers=headers, data=data, json=json_body) as response:
        body = await response.read()
        answer = Answer(response.status, dict(response.headers), body)
    note(f"  {method} {str(url)[:120]} -> {answer.status} {body[:200]!r}")
    event(f"{method} {answer.status} {answer.code or ''}".rstrip())
    assert answer.status < 500, (method, str(url), answer.status, body)
    return answer


def saw_offset(known: Known, answer: Answer) -> None:
    """2xx answers report offsets that never go back."""
    if 200 <= answer.status < 300 and "Upload-Offset" in answer.headers:
        reported = int(answer.headers["Upload-Offset"])
        assert reported >= known.offset, (known.id, reported, known.offset)
        known.offset = reported


# -- running one operation ------------------------------------------------------------------------------


async def run(world: World, op: Operation) -> None:
    note(repr(op))
    if isinstance(op, Create):
        await create(world, op)
    elif isinstance(op, CompanionCreate):
        answer = await send(world, "POST", f"{world.gw.url}/s3/multipart", headers=world.headers(op.actor),
                            json_body={"filename": "clip.bin", "type": "application/octet-stream"})
        if answer.status == 200:
                await world.track(json.loads(answer.body)["uploadId"], op.actor)
        else:
            assert answer.code == "quota_exceeded", answer
    elif isinstance(op, Concat):
        await concat(world, op)
    else:
        target = world.pick(op.actor, op.target, op)
        if target is None:
            return
        foreign = target.owner != op.actor
        status = await act(world, op, target)
        event(f"{type(op).__name__} by {'another owner' if foreign else 'its owner'}")
        if foreign and status is not None:
            assert status == 404, (op, status)  # another owner's upload does not exist for this caller


async def create(world: World, op: Create) -> None:
    extra = {"Upload-Part-Size": str(PART)}
    if op.kind == "deferred":
        extra["Upload-Defer-Length"] = "1"
    else:
        extra["Upload-Length"] = str({"small": op.size, "partial": op.size, "two_parts": PART + 1 + op.size,
                                      "big": 26 * MiB}[op.kind])
    if op.kind == "partial":
        extra["Upload-Concat"] = "partial"
    answer = await send(world, "POST", world.gw.files(), headers=world.headers(op.actor, **extra))
    if answer.status == 201:
        await world.track(answer.headers["Location"], op.actor)
    else:
        assert answer.code == "quota_exceeded", answer


async def concat(world: World, op: Concat) -> None:
    chosen = [world.pick(op.actor, t, op) for t in op.targets]
    partials = [k for k in chosen if k is not None]
    if not partials:
        return
    final = "final;" + " ".join(f"/files/{k.id}" for k in partials)
    answer = await send(world, "POST", world.gw.files(), headers=world.headers(op.actor, **{"Upload-Concat": final}))
    if any(k.owner != op.actor for k in partials):
        # Another owner's partial is a missing one; it is named unless one of the caller's own fails first.
        assert answer.status == 400, answer
        own = [k for k in partials if k.owner == op.actor]
        states = [await world.db.fetchval("select state = 'completed' and concat = 'partial' from uploads "
                                          "where id = $1", k.id) for k in own]
        assert answer.code == "invalid_concat" or not all(states), answer
    if answer.status == 201:
        await world.track(answer.headers["Location"], op.actor, tuple(k.id for k in partials))


async def current(world: World, upload_id: str) -> tuple[int, int | None, str, int]:
    upload = await world.repo.get(upload_id)
    assert upload is not None
    return upload.offset, upload.length, upload.state.value, upload.prefix_parts


async def act(world: World, op: Operation, target: Known) -> int | None:
    """Runs an operation on one upload; the status of its first request (None: nothing sent)."""
    location = world.gw.files(f"/{target.id}")
    headers = world.headers(op.actor)
    offset, length, _, prefix = await current(world, target.id)
    if isinstance(op, Head):
        answer = await send(world, "HEAD", location, headers=headers)
        saw_offset(target, answer)
        return answer.status
    if isinstance(op, Delete):
        return (await send(world, "DELETE", location, headers=headers)).status
    if isinstance(op, Patch):
        limit = length if length is not None else offset + PART
        size = {"small": op.small, "part": PART - offset % PART,
                "end": max(0, limit - offset), "past_end": max(0, limit - offset) + op.small}[op.size]
        size = min(size, PART + 10)
        at = offset if op.offset == "current" else max(0, offset - 1 - op.small % 7)
        answer = await send(world, "PATCH", location, headers={**headers, "Content-Type": OCTETS,
                                                               "Upload-Offset": str(at)},
                            data=content(target.id, at, at + size))
        saw_offset(target, answer)
        return answer.status
    if isinstance(op, Declare):
        declared = {"offset": offset, "offset+small": offset + op.small, "part+small": PART + op.small,
                    "big": 26 * MiB, "huge": 40 * MiB}[op.length]
        if op.via == "patch":
            answer = await send(world, "PATCH", location, data=b"", headers={
                **headers, "Content-Type": OCTETS, "Upload-Offset": str(offset), "Upload-Length": str(declared)})
        else:
            answer = await send(world, "POST", f"{location}/parts", headers=headers,
                                json_body={"parts": [], "length": declared})
        saw_offset(target, answer)
        event(f"declared {op.length} by {op.via} on a {'deferred' if length is None else 'sized'} upload: "
              f"{answer.status} {answer.code or ''}".rstrip())
        return answer.status
    if isinstance(op, Direct):
        number = op.part or prefix + 1
        signed = await send(world, "POST", f"{location}/parts", headers=headers, json_body={"parts": [number]})
        if signed.status != 200:
            return signed.status
        part = json.loads(signed.body)["parts"][0]
        async with world.gw.http.put(URL(part["url"], encoded=True), headers=part["headers"],
                                     data=content(target.id, part["offset"], part["offset"] + part["length"])) as r:
            await r.read()
            assert r.status == 200, r.status
        answer = await send(world, "PUT", f"{location}/parts/{number}", headers=headers)
        saw_offset(target, answer)
        return signed.status
    if isinstance(op, CompanionComplete):
        base = f"{world.gw.url}/s3/multipart/{target.id}"
        own = world.headers(op.actor)
        signed = await send(world, "GET", URL(base + "/1").with_query(key=target.key), headers=own)
        if signed.status != 200:
            return signed.status
        async with world.gw.http.put(URL(json.loads(signed.body)["url"], encoded=True),
                                     data=content(target.id, 0, op.size)) as r:
            await r.read()
            assert r.status == 200, r.status
            etag = r.headers["ETag"]
        await send(world, "POST", URL(base + "/complete").with_query(key=target.key), headers=own,
                   json_body={"parts": [{"PartNumber": 1, "ETag": etag}]})
        return signed.status
    raise AssertionError(op)


# -- invariants -------------------------------------------------------------------------------------------

ROWS = {
    "uploads": "select * from uploads where owner_sub = any($1::text[]) order by id",
    "upload_parts": "select p.* from upload_parts p join uploads u on u.id = p.upload_id "
                    "where u.owner_sub = any($1::text[]) order by p.upload_id, p.number",
    "upload_stash": "select s.* from upload_stash s join uploads u on u.id = s.upload_id "
                    "where u.owner_sub = any($1::text[]) order by s.upload_id, s.seq",
    "signed_part_checksums": "select c.* from signed_part_checksums c join uploads u on u.id = c.upload_id "
                             "where u.owner_sub = any($1::text[]) order by c.upload_id, c.number",
}


async def rows_of(world: World, subjects: Sequence[str]) -> dict[str, list[tuple[Any, ...]]]:
    return {table: [tuple(r) for r in await world.db.fetch(query, list(subjects))] for table, query in ROWS.items()}


async def check_quotas(world: World) -> None:
    usage = await world.db.fetch("select owner_sub, count(*) as n, coalesce(sum(length), 0) as bytes from uploads "
                                 "where owner_sub = any($1::text[]) and state = 'active' group by owner_sub",
                                 world.subjects)
    for row in usage:
        assert row["n"] <= MAX_UPLOADS, dict(row)
        assert row["bytes"] <= MAX_BYTES, dict(row)
    # The counter rows the quota is checked against (migrations/0007) match the recount.
    counted = await world.db.fetch("select owner_sub, active_uploads as n, active_bytes as bytes from owner_usage "
                                   "where owner_sub = any($1::text[]) and active_uploads > 0", world.subjects)
    assert sorted(tuple(r) for r in counted) == sorted(tuple(r) for r in usage)


async def check_offsets_and_bytes(world: World) -> None:
    for known in world.uploads:
        offset, length, state, _ = await current(world, known.id)
        known.state, known.length = state, length
        if state in ("terminated", "expired", "failed"):
            continue
        assert offset >= known.offset, (known.id, state, offset, known.offset)
        known.offset = offset
        if state == "completed":
            assert length is not None
            world.lengths[known.id] = length
            if not known.verified:
                bucket = world.gw.settings.s3_bucket
                data = await asyncio.to_thread(stored_bytes, world.s3, bucket, known.key)
                expected = world.expected(known, length)
                assert len(data) == len(expected) == length, (known.id, len(data), len(expected), length)
                assert hashlib.sha256(data).digest() == hashlib.sha256(expected).digest(), known.id
                known.verified = True
                event("completed upload's S3 bytes verified" + (" (final concatenation)" if known.partials else ""))


async def play(stack: StackInfo, s3: Any, ops: list[Operation]) -> None:
    run_id = uuid.uuid4().hex[:8]
    subjects = [f"prop-{run_id}-{i}" for i in range(OWNERS)]
    config = make_settings(stack, part_size=PART, max_active_uploads_per_owner=MAX_UPLOADS,
                           max_active_bytes_per_owner=MAX_BYTES, rate_limit_parts=0, rate_limit_head=0,
                           access_log=False, sweep_interval=10**7, completion_retry_after=10**7)
    pool = await asyncpg.create_pool(stack.database_url, min_size=1, max_size=2)
    assert pool is not None
    try:
        async with running(config) as gw:
            world = World(gw, pool, PgUploadRepository(pool), s3, subjects)
            for op in ops:
                others = [s for i, s in enumerate(subjects) if i != op.actor]
                before = await rows_of(world, others)
                await run(world, op)
                assert await rows_of(world, others) == before, f"{op} changed another owner's rows"
                await check_quotas(world)
                await check_offsets_and_bytes(world)
            # Leave nothing behind in S3: abort what is still open.
            for known in world.uploads:
                async with gw.http.delete(gw.files(f"/{known.id}"), headers=world.headers(known.owner)) as r:
                    await r.read()
    finally:
        await pool.close()


@settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(ops=sequences)
# The deferred-length quota hole (a length declared later was never checked against the byte quota), by
# both declarations: over the quota alone, and on top of another upload's bytes.
@example(ops=[Create(0, "deferred", 0), Declare(0, (True, 0), "huge", 1, "patch")])
@example(ops=[Create(1, "big", 0), Create(1, "deferred", 0), Declare(1, (True, 1), "part+small", 7, "sign")])
def test_random_request_sequences_keep_the_invariants(stack: StackInfo, s3: Any, ops: list[Operation]) -> None:
    asyncio.run(play(stack, s3, ops))
