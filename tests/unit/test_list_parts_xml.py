"""ListParts answers as S3 stores write them (AWS with its namespace, others without), read by the
gateway's own parser (gateway/s3/signed_requests.py) instead of botocore's."""

from __future__ import annotations

from datetime import UTC, datetime

from gateway.core.ports import ListedPart
from gateway.s3.signed_requests import parse_list_parts

AWS = b"""<?xml version="1.0" encoding="UTF-8"?>
<ListPartsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Bucket>b</Bucket><Key>uploads/00/x</Key><UploadId>m</UploadId>
  <PartNumberMarker>0</PartNumberMarker><NextPartNumberMarker>2</NextPartNumberMarker>
  <MaxParts>2</MaxParts><IsTruncated>true</IsTruncated>
  <Part><PartNumber>1</PartNumber><LastModified>2026-12-02T01:02:03.000Z</LastModified>
    <ETag>&quot;6f5902ac237024bdd0c176cb93063dc4&quot;</ETag><Size>5242880</Size>
    <ChecksumCRC32C>AAAAAA==</ChecksumCRC32C></Part>
  <Part><PartNumber>2</PartNumber><ETag>"e2"</ETag><Size>17</Size></Part>
</ListPartsResult>"""

PLAIN = b"""<ListPartsResult><IsTruncated>false</IsTruncated></ListPartsResult>"""


def test_parts_with_namespace_checksums_and_dates() -> None:
    page = parse_list_parts(AWS)
    assert page.truncated and page.next_marker == 2
    assert page.parts == [
        ListedPart(number=1, size=5242880, etag='"6f5902ac237024bdd0c176cb93063dc4"', checksum="AAAAAA==",
                   last_modified=datetime(2026, 12, 2, 1, 2, 3, tzinfo=UTC)),
        ListedPart(number=2, size=17, etag='"e2"', checksum=None),
    ]


def test_an_empty_listing_without_namespace() -> None:
    page = parse_list_parts(PLAIN)
    assert page.parts == [] and not page.truncated and page.next_marker == 0
