-- Events (outbox): written in the same statement as each state change, delivered to webhooks
-- at least once by any instance's dispatcher (rows are leased with FOR UPDATE SKIP LOCKED).
create table events (
    id              bigserial primary key,
    upload_id       text not null,
    type            text not null check (type in ('created', 'completed', 'failed', 'terminated', 'expired')),
    payload         jsonb not null,
    created_at      timestamptz not null default now(),
    attempts        integer not null default 0,
    next_attempt_at timestamptz not null default now(),
    -- Webhook URLs that acknowledged this event; delivered once all configured URLs did.
    acked_urls      text[] not null default '{}',
    delivered_at    timestamptz,
    last_error      text
);

create index events_pending on events (next_attempt_at) where delivered_at is null;
create index events_delivered on events (delivered_at) where delivered_at is not null;

-- What a webhook receives about an upload (never the S3 URLs, only where the object is).
create function upload_event_payload(u uploads) returns jsonb
language sql immutable as $$
    select jsonb_build_object(
        'id', u.id, 'state', u.state, 'owner', jsonb_build_object('iss', u.owner_iss, 'sub', u.owner_sub),
        'length', u.length, 'metadata', u.metadata, 'bucket', u.bucket, 'key', u.s3_key,
        'failure_reason', u.failure_reason, 'created_at', u.created_at, 'ended_at', u.ended_at)
$$;
