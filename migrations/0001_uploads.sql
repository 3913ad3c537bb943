-- Upload state (docs/architecture.md §2). Bytes live in S3; this is the source of truth for offsets and ownership.
create table uploads (
    id               text primary key,
    owner_iss        text not null,
    owner_sub        text not null,
    length           bigint check (length >= 0),
    part_size        bigint not null check (part_size > 0),
    part_checksum    text check (part_checksum in ('md5', 'crc32c', 'sha256')),
    metadata         jsonb not null default '{}',
    metadata_header  text not null default '',
    bucket           text not null,
    s3_key           text not null,
    multipart_id     text,
    state            text not null default 'active'
                     check (state in ('active', 'completing', 'completed', 'terminated', 'expired', 'failed')),
    failure_reason   text,
    -- Parts 1..prefix_parts are confirmed; advanced only forward under the row lock.
    prefix_parts     integer not null default 0 check (prefix_parts >= 0),
    -- Highest part number ever signed, and when the latest batch of URLs stops working.
    signed_max_part  integer not null default 0,
    signed_until     timestamptz,
    reconciled_at    timestamptz,
    writer_gen       bigint not null default 0,
    created_at       timestamptz not null default now(),
    updated_at       timestamptz not null default now(),
    expires_at       timestamptz not null,
    -- Uploads may not outlive this (the bucket's AbortIncompleteMultipartUpload rule).
    max_expires_at   timestamptz not null,
    completing_since timestamptz,
    ended_at         timestamptz
);

create index uploads_owner_active on uploads (owner_iss, owner_sub) where state = 'active';
create index uploads_expiry on uploads (expires_at) where state = 'active';
create index uploads_completing on uploads (completing_since) where state = 'completing';
create index uploads_ended on uploads (ended_at) where ended_at is not null;

-- Confirmed parts: sizes, ETags and checksums for CompleteMultipartUpload.
create table upload_parts (
    upload_id    text not null references uploads (id) on delete cascade,
    number       integer not null check (number between 1 and 10000),
    size         bigint not null,
    etag         text not null,
    checksum     text,
    confirmed_at timestamptz not null default now(),
    primary key (upload_id, number)
);

-- The checksum each part was last signed with (crc32c/sha256 uploads): Complete must list every
-- part's checksum, and some stores (SeaweedFS) do not return it from ListParts.
create table signed_part_checksums (
    upload_id text not null references uploads (id) on delete cascade,
    number    integer not null check (number between 1 and 10000),
    checksum  text not null,
    primary key (upload_id, number)
);

-- Proxy path (docs/architecture.md §3.3): the tail of a PATCH that ends inside a part is kept in S3 as immutable
-- segment objects, listed here. Segments of part n are superseded (and deleted from S3) once part n
-- is committed. Their sizes count in Upload-Offset until then.
create table upload_stash (
    upload_id   text not null references uploads (id) on delete cascade,
    part_number integer not null check (part_number between 1 and 10000),
    seq         bigint not null,
    s3_key      text not null,
    size        bigint not null check (size > 0),
    created_at  timestamptz not null default now(),
    primary key (upload_id, seq)
);

-- One round trip per confirm: record parts, advance the prefix, drop the stash of committed parts,
-- move to 'completing' when the prefix covers the length. With p_writer_gen (the proxy path) it commits
-- only while that PATCH is still the upload's writer. Returns the new row, whether this call started
-- completion (true for exactly one caller), and the parts and stash as they are after the change
-- (the calling statement's own snapshot predates them).
create function confirm_parts(p_id text, p_numbers integer[], p_sizes bigint[], p_etags text[],
                              p_checksums text[], p_ttl integer, p_writer_gen bigint default null)
returns table (upload_row uploads, started_completing boolean, confirmed_beyond integer[], stash json)
language plpgsql as $$
declare
    u uploads;
    next_part integer;
    total integer;
begin
    select * into u from uploads where id = p_id for update;
    if not found or (p_writer_gen is not null and u.writer_gen <> p_writer_gen) then
        return;
    end if;
    if u.state <> 'active' then
        upload_row := u; started_completing := false;
        confirmed_beyond := '{}'; stash := '[]';
        return next; return;
    end if;
    insert into upload_parts (upload_id, number, size, etag, checksum)
    select p_id, n, s, e, coalesce(c, (select checksum from signed_part_checksums k
                                        where k.upload_id = p_id and k.number = n))
    from unnest(p_numbers, p_sizes, p_etags, p_checksums) as t(n, s, e, c)
    on conflict (upload_id, number) do nothing;
    next_part := u.prefix_parts;
    loop
        perform 1 from upload_parts where upload_id = p_id and number = next_part + 1;
        exit when not found;
        next_part := next_part + 1;
    end loop;
    delete from upload_stash where upload_id = p_id and part_number <= next_part;
    total := case when u.length is null then null else greatest(1, ceil(u.length::numeric / u.part_size)::integer) end;
    update uploads set
        prefix_parts = next_part,
        state = case when total is not null and next_part >= total then 'completing' else state end,
        completing_since = case when total is not null and next_part >= total then now() else completing_since end,
        expires_at = least(now() + make_interval(secs => p_ttl), max_expires_at),
        updated_at = now()
    where id = p_id
    returning * into u;
    upload_row := u;
    started_completing := u.state = 'completing';
    confirmed_beyond := array(select p.number from upload_parts p
                              where p.upload_id = p_id and p.number > next_part order by p.number);
    stash := (select coalesce(json_agg(json_build_array(s.part_number, s.seq, s.s3_key, s.size) order by s.seq), '[]')
              from upload_stash s where s.upload_id = p_id);
    return next;
end;
$$;
