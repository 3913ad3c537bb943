-- The largest length an upload may reach, fixed at creation: the global GATEWAY_MAX_UPLOAD_SIZE or
-- less when the creator's token carried a lower limit (docs/architecture.md §4.5). Null: older rows,
-- bounded by the global setting.
alter table uploads add column size_limit bigint;
