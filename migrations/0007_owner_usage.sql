-- Each owner's active uploads and declared bytes as one counter row, kept by a trigger on every change
-- of an upload's state or length, and checked there against the quota the upload carries
-- (docs/architecture.md §3.1). A creation or a length declaration then costs one row update instead of
-- summing the owner's active uploads under a lock: one owner's creations queue on that row only for
-- the statement that changes it.
alter table uploads add column quota_uploads integer;

create table owner_usage (
    owner_iss text not null,
    owner_sub text not null,
    active_uploads integer not null default 0,
    active_bytes bigint not null default 0,
    primary key (owner_iss, owner_sub)
);

lock table uploads in share row exclusive mode;
insert into owner_usage (owner_iss, owner_sub, active_uploads, active_bytes)
select owner_iss, owner_sub, count(*), coalesce(sum(length), 0)
from uploads where state = 'active' group by owner_iss, owner_sub;

-- What one upload adds to its owner's usage: an active upload counts once, with its declared length.
create function owner_usage_change() returns trigger language plpgsql as $$
declare
    uploads_delta integer := 0;
    bytes_delta bigint := 0;
    usage owner_usage;
begin
    if tg_op in ('UPDATE', 'DELETE') and old.state = 'active' then
        uploads_delta := -1;
        bytes_delta := -coalesce(old.length, 0);
    end if;
    if tg_op in ('INSERT', 'UPDATE') and new.state = 'active' then
        uploads_delta := uploads_delta + 1;
        bytes_delta := bytes_delta + coalesce(new.length, 0);
    end if;
    if uploads_delta = 0 and bytes_delta = 0 then
        return null;
    end if;
    insert into owner_usage as o (owner_iss, owner_sub, active_uploads, active_bytes)
    values (coalesce(new.owner_iss, old.owner_iss), coalesce(new.owner_sub, old.owner_sub),
            uploads_delta, bytes_delta)
    on conflict (owner_iss, owner_sub) do update
        set active_uploads = o.active_uploads + excluded.active_uploads,
            active_bytes = o.active_bytes + excluded.active_bytes
    returning * into usage;
    -- Only growth is checked: finishing, ending or shrinking is always allowed.
    if tg_op <> 'DELETE' and (
        (uploads_delta > 0 and usage.active_uploads > new.quota_uploads)
        or (bytes_delta > 0 and usage.active_bytes > new.quota_bytes)) then
        raise exception 'owner quota exceeded' using errcode = 'GWQ01';
    end if;
    return null;
end $$;

create trigger uploads_owner_usage_rows
after insert or delete on uploads
for each row execute function owner_usage_change();

-- Most updates (confirms, signing, renewals) touch neither column: the WHEN keeps them off the function.
create trigger uploads_owner_usage_changes
after update of state, length on uploads
for each row when (old.state is distinct from new.state or old.length is distinct from new.length)
execute function owner_usage_change();
