-- tus concatenation: partial uploads, and final uploads assembled from them with UploadPartCopy.
alter table uploads add column concat text check (concat in ('partial', 'final'));
-- A final upload's `Upload-Concat` value, echoed by HEAD (`final;<url> <url>`).
alter table uploads add column concat_header text;
