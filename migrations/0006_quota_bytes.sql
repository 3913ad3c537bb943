-- The owner's byte quota when the upload was created (the global one, or less from the creator's
-- token): a length declared later is checked against it (docs/architecture.md §4.5).
alter table uploads add column quota_bytes bigint;
