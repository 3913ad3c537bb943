-- The core keeps protocol-neutral facts; each wire protocol renders its own headers
-- (docs/architecture.md §1).
-- Metadata keeps the client's key order (json, not jsonb), so a tus HEAD can render the canonical
-- Upload-Metadata header from it: the stored header copy goes.
alter table uploads alter column metadata type json using metadata::json;
alter table uploads alter column metadata set default '{}';
alter table uploads drop column metadata_header;
-- A final upload stores its partials' ids; `Upload-Concat: final;<url> ...` is rendered per request.
alter table uploads add column concat_partials text[] not null default '{}';
update uploads set concat_partials = array(
    select regexp_replace(url, '^.*/', '') from unnest(string_to_array(substr(concat_header, 7), ' ')) as url)
where concat_header like 'final;%';
alter table uploads drop column concat_header;
