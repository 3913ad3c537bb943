"""asyncpg adapter of the core's UploadRepository. All SQL of the gateway lives here and in migrations/."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import datetime

import asyncpg

from gateway.core.model import ConfirmedPart, NewUpload, Owner, PartChecksum, StashSegment, State, Upload
from gateway.core.ports import ConfirmResult, Event
from gateway.db.errors import translate_db_errors
from gateway.metrics import BYTES_CONFIRMED

# The stash rows of upload `u`, in order; the one place that reads them for an upload's state.
_STASH_ROWS = "from upload_stash s where s.upload_id = u.id"
_STASH_JSON = f"""(select coalesce(json_agg(json_build_array(s.part_number, s.seq, s.s3_key, s.size)
                                             order by s.seq), '[]')
     {_STASH_ROWS})"""
_STASH_BYTES = f"(select coalesce(sum(s.size), 0) {_STASH_ROWS})"
_CONFIRMED_BEYOND = """array(select p.number from upload_parts p
          where p.upload_id = u.id and p.number > u.prefix_parts order by p.number)"""


def _select(confirmed_beyond: str = _CONFIRMED_BEYOND, stash: str = _STASH_JSON) -> str:
    """Columns every read returns; derived flags use the database clock, never an instance's."""
    return f"""
    u.*,
    (u.state = 'active' and u.expires_at <= now()) as is_expired,
    (u.state = 'active' and u.signed_max_part > u.prefix_parts
        and (u.reconciled_at is null or u.reconciled_at < u.signed_until + interval '1 hour')) as needs_reconcile,
    (u.signed_max_part > u.prefix_parts and u.signed_until > now()) as signed_parts_live,
    {confirmed_beyond} as confirmed_beyond,
    {stash} as stash
"""


_SELECT = _select()
_GET = f"select {_SELECT} from uploads u where u.id = $1"

# An UPDATE ... RETURNING sees the row as it is after the update, so the flags are recomputed
# from the returned columns in a wrapping select. With an event type, the outbox row is written in
# the same statement as the state change.
def _returning(update: str, event: str | None = None) -> str:
    emit = f", ev as ({_emit(event)})" if event else ""
    return f"with u as ({update} returning *){emit} select {_SELECT} from u"


def _emit(event_type: str, where: str = "true") -> str:
    return (f"insert into events (upload_id, type, payload) "
            f"select u.id, '{event_type}', upload_event_payload(row(u.*)::uploads) from u where {where}")


# Columns written at creation, each with its value taken from a NewUpload (one list, one place).
_NEW_COLUMNS: tuple[tuple[str, str, Callable[[NewUpload], object]], ...] = (
    ("id", "text", lambda n: n.id),
    ("owner_iss", "text", lambda n: n.owner.issuer),
    ("owner_sub", "text", lambda n: n.owner.subject),
    ("length", "bigint", lambda n: n.length),
    ("part_size", "bigint", lambda n: n.part_size),
    ("part_checksum", "text", lambda n: n.part_checksum.value if n.part_checksum else None),
    ("metadata", "json", lambda n: json.dumps(n.metadata)),
    ("bucket", "text", lambda n: n.bucket),
    ("s3_key", "text", lambda n: n.key),
    ("multipart_id", "text", lambda n: n.multipart_id),
    ("state", "text", lambda n: n.state.value),
    ("concat", "text", lambda n: n.concat),
    ("concat_partials", "text[]", lambda n: list(n.concat_partials)),
    ("size_limit", "bigint", lambda n: n.size_limit),
    ("quota_bytes", "bigint", lambda n: n.quota_bytes),
    ("quota_uploads", "integer", lambda n: n.quota_uploads),
)
# Then: ttl, max_age.
_TTL, _MAX_AGE = (f"${len(_NEW_COLUMNS) + i}" for i in range(1, 3))
_PARAM = {name: f"${i}::{kind}" for i, (name, kind, _) in enumerate(_NEW_COLUMNS, 1)}

_INSERT = f"""
with u as (
    insert into uploads ({", ".join(name for name, _, _ in _NEW_COLUMNS)}, expires_at, max_expires_at, ended_at)
    select {", ".join(_PARAM.values())},
           now() + make_interval(secs => least({_TTL}::float8, {_MAX_AGE}::float8)),
           now() + make_interval(secs => {_MAX_AGE}::float8),
           case when {_PARAM["state"]} = 'active' then null else now() end
    returning *
), created as ({_emit("created")}), completed as ({_emit("completed", "u.state = 'completed'")})
select {_SELECT} from u
"""

_TERMINATE = _returning("""
    update uploads set state = 'terminated', ended_at = now(), updated_at = now(), writer_gen = writer_gen + 1
    where id = $1 and state <> 'completing'
""", "terminated")

_RECORD_SIGNED = f"""
with u as (
    update uploads set signed_max_part = greatest(signed_max_part, $2),
                       signed_until = greatest(signed_until, $3),
                       expires_at = least(now() + make_interval(secs => $4::float8), max_expires_at),
                       updated_at = now()
    where id = $1 and state = 'active' and expires_at > now()
    returning *
), checksums as (
    insert into signed_part_checksums (upload_id, number, checksum)
    select $1, n, c from unnest($5::integer[], $6::text[]) as t(n, c) where exists (select 1 from u)
    on conflict (upload_id, number) do update set checksum = excluded.checksum
)
select {_SELECT} from u
"""

# The owner's quota is kept by the `owner_usage` trigger (migrations/0007_owner_usage.sql): it counts
# every insert and every change of state or length, and fails the statement with this SQLSTATE when an
# upload's quota_uploads or quota_bytes would be exceeded, so nothing is written.
_QUOTA_EXCEEDED = "GWQ01"
_DECLARE_LENGTH = _returning("""
    update uploads set length = $2,
                       state = case when prefix_parts * part_size >= $2 then 'completing' else state end,
                       completing_since = case when prefix_parts * part_size >= $2 then now() end,
                       expires_at = least(now() + make_interval(secs => $3::float8), max_expires_at),
                       updated_at = now()
    where id = $1 and state = 'active' and length is null
""")
# The bytes declared in an owner's active uploads (the quota's measure), but for upload $3.
_ACTIVE_BYTES = """
    select coalesce((select active_bytes from owner_usage where owner_iss = $1 and owner_sub = $2), 0)
         - coalesce((select length from uploads where id = $3 and state = 'active'), 0)
"""

_CONFIRM = f"""
    select {_select("c.confirmed_beyond", "c.stash")}, c.started_completing
    from confirm_parts($1, $2::integer[], $3::bigint[], $4::text[], $5::text[], $6, $7) c,
         lateral (select (c.upload_row).*) u
"""

# A new writer preempts the current one; signed parts past the prefix stop counting for reconcile,
# since the proxy path may now write those part numbers.
# With $4, a first PATCH lowers the part size of an upload nothing was written to or signed for yet
# (docs/architecture.md §2).
_CLAIM_WRITER = _returning(f"""
    update uploads u set writer_gen = writer_gen + 1, signed_max_part = prefix_parts,
                         part_size = case when $4::bigint is not null and $2 = 0 and u.signed_max_part = 0
                                               and not exists (select 1 from upload_parts p where p.upload_id = u.id)
                                          then $4 else u.part_size end,
                         expires_at = least(now() + make_interval(secs => $3::float8), max_expires_at),
                         updated_at = now()
    where id = $1 and state = 'active' and expires_at > now()
      and prefix_parts * part_size + {_STASH_BYTES} = $2
""")

_ADD_STASH = """
    with fenced as (
        update uploads set updated_at = now(),
                           expires_at = least(now() + make_interval(secs => $7::float8), max_expires_at)
        where id = $1 and writer_gen = $2 and state = 'active'
        returning id
    )
    insert into upload_stash (upload_id, part_number, seq, s3_key, size)
    select id, $3, $4, $5, $6 from fenced
    returning 1
"""

_REPLACE_STASH = """
    with fenced as (select id from uploads where id = $1 and writer_gen = $2 and state = 'active' for update),
    dropped as (delete from upload_stash where upload_id in (select id from fenced) and part_number = $3)
    insert into upload_stash (upload_id, part_number, seq, s3_key, size)
    select id, $3, $4, $5, $6 from fenced
    returning 1
"""

# Completion left behind by a dead process or a timed-out request. Bumping completing_since is the
# lease: other instances skip the row for another `stale_after` seconds.
_CLAIM_STALE_COMPLETING = f"""
with u as (
    update uploads set completing_since = now()
    where id in (select id from uploads
                 where state = 'completing' and completing_since < now() - make_interval(secs => $1::float8)
                   and ($3::text is null or id = $3)
                 order by completing_since limit $2
                 for update skip locked)
    returning *
)
select {_SELECT} from u
"""

# The completing instance's lease: renewed while CompleteMultipartUpload runs (large objects take minutes).
_RENEW_COMPLETION = "update uploads set completing_since = now() where id = $1 and state = 'completing'"

_CLAIM_RECONCILE = """
    update uploads set reconciled_at = now()
    where id = $1 and (reconciled_at is null or reconciled_at < now() - make_interval(secs => $2::float8))
    returning 1
"""

_CONFIRMED_PARTS = """
    select number, size, etag, checksum from upload_parts where upload_id = $1 order by number
"""

_FINISH = f"""
with u as (
    update uploads set state = $2, failure_reason = $3, ended_at = now(), updated_at = now()
    where id = $1 and state = 'completing'
    returning *
), completed as ({_emit("completed", "u.state = 'completed'")}), failed as ({_emit("failed", "u.state = 'failed'")})
select 1
"""

# Active uploads past their expiry: ended in the same statement that claims them (many sweepers may
# run at once), their stash rows dropped; the caller then aborts their S3 uploads.
_EXPIRE = f"""
with u as (
    update uploads set state = 'expired', ended_at = now(), updated_at = now(), writer_gen = writer_gen + 1
    where id in (select id from uploads where state = 'active' and expires_at <= now()
                 order by expires_at limit $1 for update skip locked)
    returning *
), expired as ({_emit("expired")}),
dropped as (delete from upload_stash where upload_id in (select id from u))
select {_SELECT} from u
"""

_PURGE_TOMBSTONES = """
    delete from uploads where id in (
        select id from uploads where ended_at < now() - make_interval(days => $1) limit $2)
"""

_PURGE_EVENTS = """
    delete from events where id in (
        select id from events where delivered_at < now() - make_interval(days => $1) limit $2)
"""

_CLAIM_EVENTS = """
    update events set next_attempt_at = now() + make_interval(secs => $2::float8)
    where id in (select id from events where delivered_at is null and next_attempt_at <= now()
                 order by id limit $1 for update skip locked)
    returning id, upload_id, type, payload, created_at, attempts, acked_urls
"""

_RECORD_DELIVERY = """
    update events set acked_urls = $2, attempts = attempts + 1, last_error = $4,
                      delivered_at = case when $3 then now() end,
                      next_attempt_at = now() + make_interval(secs => $5::float8)
    where id = $1
"""

_LIVE_MULTIPART_IDS = """
    select multipart_id from uploads where multipart_id = any($1::text[]) and state in ('active', 'completing')
"""

_REOPEN = """
    with reopened as (
        update uploads set state = 'active', completing_since = null, updated_at = now(),
                           prefix_parts = least(prefix_parts,
                                                (select coalesce(min(n), 10001) - 1 from unnest($2::integer[]) n))
        where id = $1 and state = 'completing'
        returning id
    )
    delete from upload_parts where upload_id in (select id from reopened) and number = any($2::integer[])
"""


def _to_upload(row: asyncpg.Record) -> Upload:
    checksum = row["part_checksum"]
    return Upload(
        id=row["id"],
        owner=Owner(row["owner_iss"], row["owner_sub"]),
        length=row["length"],
        part_size=row["part_size"],
        part_checksum=PartChecksum(checksum) if checksum else None,
        metadata=json.loads(row["metadata"]),
        bucket=row["bucket"],
        key=row["s3_key"],
        multipart_id=row["multipart_id"],
        state=State(row["state"]),
        prefix_parts=row["prefix_parts"],
        expires_at=row["expires_at"],
        is_expired=row["is_expired"],
        signed_max_part=row["signed_max_part"],
        needs_reconcile=row["needs_reconcile"],
        confirmed_beyond_prefix=tuple(row["confirmed_beyond"]),
        failure_reason=row["failure_reason"],
        signed_parts_live=row["signed_parts_live"],
        writer_gen=row["writer_gen"],
        stash=tuple(StashSegment(*segment) for segment in json.loads(row["stash"])),
        concat=row["concat"],
        concat_partials=tuple(row["concat_partials"]),
        size_limit=row["size_limit"],
        quota_bytes=row["quota_bytes"],
        quota_uploads=row["quota_uploads"],
    )


class PgUploadRepository:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def _fetch_upload(self, query: str, *args: object) -> Upload | None:
        async with translate_db_errors():
            row = await self.pool.fetchrow(query, *args)
        return _to_upload(row) if row else None

    async def insert(self, new: NewUpload, ttl: int, max_age: int) -> Upload | None:
        """The new upload, or None when its quota of the owner's active uploads or bytes is used up."""
        try:
            return await self._fetch_upload(_INSERT, *(value(new) for _, _, value in _NEW_COLUMNS), ttl, max_age)
        except asyncpg.PostgresError as exc:
            if exc.sqlstate == _QUOTA_EXCEEDED:
                return None
            raise

    async def get(self, upload_id: str) -> Upload | None:
        return await self._fetch_upload(_GET, upload_id)

    async def terminate(self, upload_id: str) -> Upload | None:
        return await self._fetch_upload(_TERMINATE, upload_id)

    async def record_signed(self, upload_id: str, max_part: int, urls_expire_at: datetime, ttl: int,
                            checksums: Sequence[tuple[int, str]] = ()) -> Upload | None:
        return await self._fetch_upload(_RECORD_SIGNED, upload_id, max_part, urls_expire_at, ttl,
                                        [n for n, _ in checksums], [c for _, c in checksums])

    async def declare_length(self, upload_id: str, length: int, ttl: int) -> tuple[Upload | None, bool]:
        try:
            return await self._fetch_upload(_DECLARE_LENGTH, upload_id, length, ttl), False
        except asyncpg.PostgresError as exc:
            if exc.sqlstate != _QUOTA_EXCEEDED:
                raise
        # Refused by the owner's byte quota; an upload that has expired meanwhile is simply gone.
        current = await self.get(upload_id)
        return None, current is not None and current.state is State.ACTIVE and not current.is_expired

    async def active_bytes(self, owner: Owner, excluding: str) -> int:
        async with translate_db_errors():
            return int(await self.pool.fetchval(_ACTIVE_BYTES, owner.issuer, owner.subject, excluding))

    async def confirm_parts(self, upload_id: str, parts: Sequence[ConfirmedPart], ttl: int,
                            writer_gen: int | None = None) -> ConfirmResult | None:
        async with translate_db_errors():
            row = await self.pool.fetchrow(
                _CONFIRM, upload_id, [p.number for p in parts], [p.size for p in parts],
                [p.etag for p in parts], [p.checksum for p in parts], ttl, writer_gen)
        if row is None:
            return None
        BYTES_CONFIRMED.labels("direct" if writer_gen is None else "proxy").inc(sum(p.size for p in parts))
        return ConfirmResult(_to_upload(row), row["started_completing"])

    async def claim_writer(self, upload_id: str, offset: int, ttl: int, part_size: int | None = None) -> Upload | None:
        return await self._fetch_upload(_CLAIM_WRITER, upload_id, offset, ttl, part_size)

    async def add_stash(self, upload_id: str, writer_gen: int, segment: StashSegment, ttl: int) -> Upload | None:
        # Two statements in one transaction: a statement cannot read the stash row it inserts.
        async with translate_db_errors(), self.pool.acquire() as conn, conn.transaction():
            added = await conn.fetchval(_ADD_STASH, upload_id, writer_gen, segment.part, segment.seq, segment.key,
                                        segment.size, ttl)
            row = await conn.fetchrow(_GET, upload_id) if added else None
        return _to_upload(row) if row else None

    async def replace_stash(self, upload_id: str, writer_gen: int, segment: StashSegment) -> bool:
        async with translate_db_errors():
            return await self.pool.fetchval(_REPLACE_STASH, upload_id, writer_gen, segment.part, segment.seq,
                                            segment.key, segment.size) is not None

    async def claim_stale_completing(self, stale_after: float, limit: int,
                                     upload_id: str | None = None) -> list[Upload]:
        async with translate_db_errors():
            rows = await self.pool.fetch(_CLAIM_STALE_COMPLETING, stale_after, limit, upload_id)
        return [_to_upload(row) for row in rows]

    async def renew_completion(self, upload_id: str) -> None:
        async with translate_db_errors():
            await self.pool.execute(_RENEW_COMPLETION, upload_id)

    async def claim_reconcile(self, upload_id: str, interval: float) -> bool:
        async with translate_db_errors():
            return await self.pool.fetchval(_CLAIM_RECONCILE, upload_id, interval) is not None

    async def confirmed_parts(self, upload_id: str) -> list[ConfirmedPart]:
        async with translate_db_errors():
            rows = await self.pool.fetch(_CONFIRMED_PARTS, upload_id)
        return [ConfirmedPart(r["number"], r["size"], r["etag"], r["checksum"]) for r in rows]

    async def finish_completing(self, upload_id: str, state: State, reason: str | None = None) -> None:
        async with translate_db_errors():
            await self.pool.execute(_FINISH, upload_id, state.value, reason)

    async def expire_batch(self, limit: int) -> list[Upload]:
        async with translate_db_errors():
            rows = await self.pool.fetch(_EXPIRE, limit)
        return [_to_upload(row) for row in rows]

    async def purge_ended(self, tombstone_days: int, event_days: int, limit: int) -> tuple[int, int]:
        async with translate_db_errors():
            uploads = await self.pool.execute(_PURGE_TOMBSTONES, tombstone_days, limit)
            events = await self.pool.execute(_PURGE_EVENTS, event_days, limit)
        return int(uploads.split()[-1]), int(events.split()[-1])

    async def live_multipart_ids(self, multipart_ids: Sequence[str]) -> set[str]:
        async with translate_db_errors():
            rows = await self.pool.fetch(_LIVE_MULTIPART_IDS, list(multipart_ids))
        return {r["multipart_id"] for r in rows}

    async def claim_events(self, limit: int, lease_seconds: float) -> list[Event]:
        async with translate_db_errors():
            rows = await self.pool.fetch(_CLAIM_EVENTS, limit, lease_seconds)
        return [Event(r["id"], r["upload_id"], r["type"], json.loads(r["payload"]), r["created_at"], r["attempts"],
                      tuple(r["acked_urls"])) for r in rows]

    async def record_delivery(self, event_id: int, acked_urls: Sequence[str], delivered: bool,
                              error: str | None, retry_in: float) -> None:
        async with translate_db_errors():
            await self.pool.execute(_RECORD_DELIVERY, event_id, list(acked_urls), delivered, error, retry_in)

    async def ping(self) -> None:
        await self.pool.fetchval("select 1")

    async def count_by_state(self) -> dict[str, int]:
        async with translate_db_errors():
            rows = await self.pool.fetch("select state, count(*) as n from uploads group by state")
        return {r["state"]: r["n"] for r in rows}

    async def backlog(self) -> int:
        async with translate_db_errors():
            return int(await self.pool.fetchval("select count(*) from events where delivered_at is null"))

    async def reopen(self, upload_id: str, unconfirm: Sequence[int]) -> None:
        async with translate_db_errors():
            await self.pool.execute(_REOPEN, upload_id, list(unconfirm))
