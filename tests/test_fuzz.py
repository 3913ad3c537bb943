"""Property-based fuzzing of every endpoint: headers, paths and JSON bodies from hypothesis.

One real gateway (Postgres + SeaweedFS) runs in a background thread for the whole module
(`tests.support.threaded`); requests go out synchronously with `http.client`, so header values reach the
server byte for byte (VCHAR, SP and obs-text 0x80-0xFF, never CR/LF). For every request:

- never a 500, nor any 5xx except a 503 that carries Retry-After;
- every 4xx has a JSON body `{"error": {"code", "message"}}` (HEAD excepted: no body), and every
  response carries `Tus-Resumable: 1.0.0`;
- a rejected request (status >= 400) changes nothing: the fuzzing owners' rows in `uploads`,
  `upload_parts`, `upload_stash`, `signed_part_checksums` and `events` are snapshotted before and
  after and compared. A 2xx may change state; the target upload is then replaced by a fresh one.

The bugs this fuzzing found are pinned by regression tests at the end of this file; one that lives
in aiohttp's HTTP parser (plain-text 400s before any middleware) stays an `xfail(strict=True)`.

Examples per test are set by `fuzz_settings(n)` below: about 3,500 in all by default (`make test`, about a
minute on two cores), scaled by GATEWAY_FUZZ_SCALE for a long run (3 gives about 10,000; a run of 30,000
took 466 s and found nothing). `pytest --hypothesis-show-statistics` prints each test's count. The runs are
derandomized and use no example database, so nothing is written into the repo.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import string
import uuid
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, Phase, event, example, given, note, settings
from hypothesis import strategies as st

import gateway.core.listing as core_listing
from gateway.embedded import StackInfo
from gateway.http import tus as tus_wire
from tests.support import MiB
from tests.support.gateway import make_settings
from tests.support.threaded import Reply, ThreadedGateway
from tests.support.tokens import TUS, token

PART = 5 * MiB
OCTETS = "application/offset+octet-stream"
SCALE = float(os.environ.get("GATEWAY_FUZZ_SCALE", "1"))


def fuzz_settings(examples: int) -> settings:
    return settings(max_examples=max(1, int(examples * SCALE)), deadline=None, database=None, derandomize=True,
                    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much, HealthCheck.large_base_example])


# -- the module's gateway and its targets ----------------------------------------------------------------

# Uploads every fuzzing test aims at, rebuilt whenever a 2xx changed what they are.
KINDS = ("active", "small", "deferred", "md5", "sha256", "stashed", "signed", "completed", "terminated",
         "foreign")


@dataclass
class Fuzz:
    gw: ThreadedGateway
    subject: str  # owns the targets
    other: str  # owns "foreign"
    creator: str  # owner of the uploads that creation fuzzing makes
    token: str
    other_token: str
    creator_token: str
    first_event: int  # events of this module have ids from here on
    targets: dict[str, str] = field(default_factory=dict)
    # The snapshot taken after the last refused request, while no request can have changed anything since:
    # the next example's "before" (one snapshot per refused example instead of two). Dropped by every other
    # request the module makes (`create`, `discard`, a 2xx) and at the start of each test.
    unchanged: dict[str, Any] | None = None

    @property
    def auth(self) -> list[tuple[str, str]]:
        return [("Authorization", f"Bearer {self.token}"), *TUS.items()]

    def create(self, kind: str) -> str:
        """A fresh upload of `kind`; returns its id."""
        self.unchanged = None
        headers = dict(self.auth)
        extra: dict[str, str] = {"Upload-Part-Size": str(PART)}
        if kind in ("active", "stashed", "signed"):
            extra["Upload-Length"] = str(12 * MiB)
        elif kind in ("small", "terminated"):
            extra["Upload-Length"] = "100"
        elif kind == "foreign":
            extra["Upload-Length"] = "100"
            headers["Authorization"] = f"Bearer {self.other_token}"
        elif kind == "deferred":
            extra["Upload-Defer-Length"] = "1"
        elif kind in ("md5", "sha256"):
            extra.update({"Upload-Length": str(6 * MiB), "Upload-Part-Checksum": kind})
        elif kind == "completed":
            extra = {"Upload-Length": "0"}
        reply = self.gw.request("POST", self.gw.files(), {**headers, **extra})
        assert reply.status == 201, (kind, reply.status, reply.body)
        upload_id = (reply.header("Location") or "").rsplit("/", 1)[-1]
        if kind == "stashed":
            done = self.gw.request("PATCH", self.gw.files(f"/{upload_id}"),
                                   {**headers, "Content-Type": OCTETS, "Upload-Offset": "0"}, b"s" * 10)
            assert done.status == 204, done.body
        elif kind == "signed":
            done = self.gw.request("POST", self.gw.files(f"/{upload_id}/parts"), headers, b'{"parts": [1]}')
            assert done.status == 200, done.body
        elif kind == "terminated":
            done = self.gw.request("DELETE", self.gw.files(f"/{upload_id}"), headers)
            assert done.status == 204, done.body
        return upload_id

    def target(self, kind: str) -> str:
        if kind not in self.targets:
            self.targets[kind] = self.create(kind)
        return self.targets[kind]

    def renew(self, kind: str) -> None:
        old = self.targets.get(kind)
        self.targets[kind] = self.create(kind)
        if old is not None:
            self.discard(old, self.other_token if kind == "foreign" else self.token)

    def discard(self, upload_id: str, bearer: str) -> None:
        """DELETE an upload the tests are done with, then drop its rows, so snapshots stay small."""
        self.unchanged = None
        self.gw.request("DELETE", self.gw.files(f"/{upload_id}"), {"Authorization": f"Bearer {bearer}", **TUS})
        self.gw.run(_purge(self.gw, upload_id))

    def renew_touched(self, path: str) -> None:
        for kind, upload_id in list(self.targets.items()):
            if upload_id in path:
                self.renew(kind)

    # -- Postgres snapshots -------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return self.gw.run(_snapshot(self.gw, [self.subject, self.other, self.creator], self.first_event))


async def _purge(gw: ThreadedGateway, upload_id: str) -> None:
    db = gw.db
    assert db is not None
    async with db.transaction():
        await db.execute("delete from events where upload_id = $1", upload_id)
        await db.execute("delete from uploads where id = $1", upload_id)  # parts, stash, checksums cascade


# The fuzzing owners' rows in one round trip (it runs before every example): each table as a JSON array.
_SNAPSHOT = """
with u as (select * from uploads where owner_sub = any($1::text[]))
select
  (select coalesce(json_agg(to_jsonb(u) order by u.id), '[]') from u) as uploads,
  (select coalesce(json_agg(to_jsonb(p) order by p.upload_id, p.number), '[]')
   from upload_parts p where p.upload_id in (select id from u)) as upload_parts,
  (select coalesce(json_agg(to_jsonb(s) order by s.upload_id, s.seq), '[]')
   from upload_stash s where s.upload_id in (select id from u)) as upload_stash,
  (select coalesce(json_agg(to_jsonb(c) order by c.upload_id, c.number), '[]')
   from signed_part_checksums c where c.upload_id in (select id from u)) as signed_part_checksums,
  (select coalesce(json_agg(json_build_array(e.id, e.upload_id, e.type, e.payload) order by e.id), '[]')
   from events e where e.id >= $2
     and (e.upload_id in (select id from u) or e.payload->'owner'->>'sub' = any($1::text[]))) as events
"""


async def _snapshot(gw: ThreadedGateway, subjects: list[str], first_event: int) -> dict[str, Any]:
    db = gw.db
    assert db is not None
    row = await db.fetchrow(_SNAPSHOT, subjects, first_event)
    tables = {name: json.loads(row[name]) for name in ("uploads", "upload_parts", "upload_stash",
                                                        "signed_part_checksums", "events")}
    # Rows as JSON objects (events as [id, upload_id, type, payload] arrays): compared, never written.
    return {"uploads": {r["id"]: r for r in tables.pop("uploads")}, **tables}


def diff(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """What changed between two snapshots: per upload the changed columns, per table the rows."""
    changes: dict[str, Any] = {}
    rows_before, rows_after = before["uploads"], after["uploads"]
    for upload_id in sorted(set(rows_before) | set(rows_after)):
        old, new = rows_before.get(upload_id), rows_after.get(upload_id)
        if old is None or new is None:
            changes[f"uploads:{upload_id}"] = "created" if old is None else "deleted"
            continue
        columns = {k: (old[k], new[k]) for k in old if old[k] != new[k]}
        if columns:
            changes[f"uploads:{upload_id}"] = columns
    for table in ("upload_parts", "upload_stash", "signed_part_checksums", "events"):
        if before[table] != after[table]:
            changes[table] = {"removed": [r for r in before[table] if r not in after[table]],
                              "added": [r for r in after[table] if r not in before[table]]}
    return changes


@pytest.fixture(scope="module")
def fz(stack: StackInfo) -> Iterator[Fuzz]:
    # Confirming a part S3 does not hold retries ListParts for ~2 s (LISTING_RETRY_DELAYS); one look is
    # enough here and keeps hundreds of such examples fast. Restored afterwards.
    saved_delays = core_listing.LISTING_RETRY_DELAYS
    core_listing.LISTING_RETRY_DELAYS = ()
    settings_ = make_settings(
        stack, rate_limit_parts=0, rate_limit_head=0, access_log=False, cors_origins=("*",),
        # No sweeper/completion worker run during the module: rows change only through requests.
        sweep_interval=10**7, completion_retry_after=10**7,
        max_active_uploads_per_owner=10**6, max_active_bytes_per_owner=2**62, body_idle_timeout=5.0)
    run = uuid.uuid4().hex[:8]
    try:
        with ThreadedGateway(settings_) as gw:
            subject, other, creator = f"fuzz-{run}", f"fuzz-other-{run}", f"fuzz-create-{run}"
            first_event = int(gw.fetchval("select coalesce(max(id), 0) + 1 from events"))
            fuzz = Fuzz(gw, subject, other, creator, token(subject, ttl=3600), token(other, ttl=3600),
                        token(creator, ttl=3600), first_event)
            for kind in KINDS:
                fuzz.target(kind)
            yield fuzz
            cleanup(fuzz)
    finally:
        core_listing.LISTING_RETRY_DELAYS = saved_delays


@pytest.fixture(autouse=True)
def _no_stale_snapshot(fz: Fuzz) -> None:
    """Each test starts from a snapshot of its own (tests outside `exchange` send requests directly)."""
    fz.unchanged = None


def cleanup(fuzz: Fuzz) -> None:
    """Abort what the module left in S3 (active multipart uploads, completed objects)."""
    rows = fuzz.gw.fetch("select id, owner_sub from uploads where owner_sub = any($1::text[]) "
                         "and state in ('active', 'completed')", [fuzz.subject, fuzz.other, fuzz.creator])
    tokens = {fuzz.subject: fuzz.token, fuzz.other: fuzz.other_token, fuzz.creator: fuzz.creator_token}
    for row in rows:
        fuzz.gw.request("DELETE", fuzz.gw.files(f"/{row['id']}"),
                        {"Authorization": f"Bearer {tokens[row['owner_sub']]}", **TUS})


# -- invariants -----------------------------------------------------------------------------------------

ALLOWED_4XX_WITHOUT_BODY = frozenset({"HEAD"})


def check_reply(method: str, reply: Reply) -> None:
    """What every answer must look like, whatever was asked."""
    status = reply.status
    note(f"-> {status} {reply.headers} {reply.body[:300]!r}")
    assert status < 500 or (status == 503 and reply.header("Retry-After")), (status, reply.body)
    assert reply.header("Tus-Resumable") == "1.0.0", reply.headers
    for name, value in reply.headers:
        assert "\r" not in value and "\n" not in value and "\x00" not in value, (name, value)
    if status >= 400 and method not in ALLOWED_4XX_WITHOUT_BODY:
        assert (reply.header("Content-Type") or "").startswith("application/json"), (status, reply.headers)
        body = json.loads(reply.body)
        assert isinstance(body, dict) and isinstance(body.get("error"), dict), body
        assert isinstance(body["error"].get("code"), str) and body["error"]["code"], body
        assert isinstance(body["error"].get("message"), str), body
    if status == 401:
        assert (reply.header("WWW-Authenticate") or "").startswith("Bearer"), reply.headers
    if status == 412:
        assert reply.header("Tus-Version") == "1.0.0", reply.headers
    if status == 405:
        assert reply.header("Allow") is not None, reply.headers
    if status in (429, 423):
        assert reply.header("Retry-After"), reply.headers


# Bookkeeping a PATCH does before it has read its body: it must claim the writer role (fencing any older
# writer) first, so a body refused once read (460 checksum mismatch) leaves these columns touched.
WRITER_CLAIM_COLUMNS = frozenset({"writer_gen", "updated_at", "expires_at", "signed_max_part"})
LENGTH_DECLARATION_COLUMNS = frozenset({"length", "updated_at", "expires_at"})


def tolerated(changes: dict[str, Any], target: str | None, reply: Reply, declared_length: int | None) -> str | None:
    """Name of the known cause of a change on a rejected request, or None when the change is a failure."""
    if target is None or set(changes) != {f"uploads:{target}"}:
        return None
    columns = changes[f"uploads:{target}"]
    if not isinstance(columns, dict):
        return None
    allowed: set[str] = set()
    causes = []
    if reply.status == 460 and _error_code(reply) == "checksum_mismatch":
        allowed |= WRITER_CLAIM_COLUMNS
        causes.append("writer claimed before a 460")
    if declared_length is not None and columns.get("length") == (None, declared_length):
        allowed |= LENGTH_DECLARATION_COLUMNS
        causes.append("known bug: length declared by a rejected request")
    return " + ".join(causes) if causes and set(columns) <= allowed else None


def _error_code(reply: Reply) -> str | None:
    try:
        return str(json.loads(reply.body)["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return None


def exchange(fuzz: Fuzz, method: str, path: str, headers: Sequence[tuple[str, str]], body: bytes | None, *,
             target: str | None = None, declared_length: int | None = None) -> Reply:
    """Send one request, check the answer and, if it was refused, that nothing changed."""
    note(f"{method} {path} {headers} body={body[:200] if body is not None else None!r}")
    before = fuzz.unchanged if fuzz.unchanged is not None else fuzz.snapshot()
    fuzz.unchanged = None
    reply = fuzz.gw.request(method, path, headers, body)
    event(f"status {reply.status}")
    check_reply(method, reply)
    if reply.status >= 400:
        after = fuzz.snapshot()
        fuzz.unchanged = after
        changes = diff(before, after)
        if changes:
            cause = tolerated(changes, target, reply, declared_length)
            assert cause is not None, f"a refused request ({reply.status} {reply.body[:200]!r}) changed {changes}"
            event(cause)
    elif 200 <= reply.status < 300 and method not in ("GET", "HEAD", "OPTIONS"):
        fuzz.renew_touched(path)
    return reply


def indistinguishable(fz: Fuzz, reply: Reply, method: str, unknown_path: str, headers: Sequence[tuple[str, str]],
                      body: bytes | None) -> None:
    """Another owner's upload answers exactly like one that does not exist (status and error code)."""
    twin = exchange(fz, method, unknown_path, headers, body)
    assert (twin.status, _error_code(twin)) == (reply.status, _error_code(reply)), (twin.body, reply.body)


# -- strategies -------------------------------------------------------------------------------------------

# What an HTTP/1.1 field value can carry: VCHAR, SP and obs-text (0x80-0xFF); never CR, LF, NUL or DEL.
FIELD_CHARS = "".join(chr(c) for c in range(0x20, 0x7F)) + "".join(chr(c) for c in range(0x80, 0x100))


def wire(text: str) -> str:
    """Text as the latin-1 string whose bytes are its UTF-8 encoding (http.client sends latin-1)."""
    return text.encode("utf-8").decode("latin-1")


def server_view(value: str) -> str:
    """A header value as aiohttp hands it to the gateway: the wire bytes decoded as UTF-8, surrogateescape."""
    return value.encode("latin-1").decode("utf-8", "surrogateescape")


def mostly(usual: st.SearchStrategy[Any], other: st.SearchStrategy[Any], tenths: int = 8) -> st.SearchStrategy[Any]:
    """`usual` in about `tenths` out of ten draws, else `other`."""
    return st.integers(0, 9).flatmap(lambda i: usual if i < tenths else other)


printable_unicode = st.text(st.characters(exclude_categories=("Cc", "Cs")), max_size=30)
header_text = st.one_of(
    st.text(FIELD_CHARS, max_size=40),
    printable_unicode.map(wire),
    st.text(string.digits + " +-.,;=xeE", max_size=12),
)
numeric_header = st.one_of(
    st.integers(0, 2**20).map(str),
    st.integers(0, 2**70).map(str),
    st.integers(-(2**40), -1).map(str),
    st.sampled_from(["", " ", "0", "00", "+1", "-0", "1e3", "0x10", "1.0", "1,2", "1 2", " 7 ", "9" * 19, "9" * 20,
                     "18446744073709551616", "9223372036854775807", "9223372036854775808", "\xb2", "\xb9\xb2",
                     wire("١٢"), wire("５"), "\xa05", "5\xa0", "NaN", "inf"]),
    header_text,
)
tus_version = mostly(st.just("1.0.0"), st.one_of(
    st.just(" 1.0.0 "), st.sampled_from(["1.0", "0.2.2", "1.0.0,0.2.2", ""]), header_text, st.none()), 9)
b64 = st.binary(max_size=48).map(lambda raw: base64.b64encode(raw).decode())
meta_key = st.one_of(st.sampled_from(["filename", "filetype", "name", "contentType", "relativePath", "type"]),
                     st.text(string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~\"/:;<=>?@[]\\{}", min_size=1,
                             max_size=12),
                     st.text(FIELD_CHARS.replace(" ", "").replace(",", ""), min_size=1, max_size=12))
meta_value = st.one_of(
    b64,
    printable_unicode.map(lambda s: base64.b64encode(s.encode()).decode()),
    st.sampled_from(["", "YQ", "YQ=", "YQ==", "Y Q==", "====", "YQ===", "Y!==", "YWJj\xe9", "-_8=", "YWJj ZGVm"]),
    header_text,
)
meta_pair = st.tuples(meta_key, st.one_of(st.none(), meta_value)).map(
    lambda kv: kv[0] if kv[1] is None else f"{kv[0]} {kv[1]}")
metadata_header = st.one_of(
    st.lists(meta_pair, max_size=6).flatmap(
        lambda pairs: st.sampled_from([",", ", ", " ,", ",,"]).map(lambda sep: sep.join(pairs))),
    st.lists(st.sampled_from(["filename", "filetype"]), min_size=1, max_size=40).map(
        lambda keys: ",".join(f"{k}{i} YQ==" for i, k in enumerate(keys))),
    st.integers(3000, 5000).map(lambda n: "filename " + "QUFB" * (n // 4)),
    header_text,
)
content_type = st.one_of(
    st.just(OCTETS), st.just(OCTETS),
    st.sampled_from([f"{OCTETS}; charset=utf-8", OCTETS.upper(), f" {OCTETS} ", f"{OCTETS},", f'{OCTETS}; a="',
                     "application/octet-stream", "application/json", "text/plain", "", "/", ";", "a/b/c",
                     "multipart/form-data; boundary=x"]),
    header_text,
)


def digest(algorithm: str, data: bytes) -> str:
    raw = zlib.crc32(data).to_bytes(4, "big") if algorithm == "crc32" else hashlib.new(algorithm, data).digest()
    return base64.b64encode(raw).decode()


def upload_checksum(body: bytes) -> st.SearchStrategy[str | None]:
    return st.one_of(
        st.none(), st.none(),
        st.sampled_from(["sha1", "md5", "sha256", "crc32"]).map(lambda a: f"{a} {digest(a, body)}"),
        st.tuples(st.sampled_from(["sha1", "md5", "sha256", "crc32", "SHA1", "sha3", "crc32c", "", " "]), b64).map(
            " ".join),
        st.sampled_from(["sha1", "sha1 ", "sha1 !!!", "md5 YQ", "sha256 " + "A" * 44, "crc32 AAAAAA==x"]),
        header_text,
    )


def other_headers(pairs: list[tuple[str, str | None]]) -> list[tuple[str, str]]:
    return [(name, value) for name, value in pairs if value is not None]


def base_headers(fuzz: Fuzz, tus: str | None, authorization: str | None = None) -> list[tuple[str, str]]:
    headers = [("Authorization", authorization if authorization is not None else f"Bearer {fuzz.token}")]
    if tus is not None:
        headers.append(("Tus-Resumable", tus))
    return headers


# JSON for the /parts endpoints.
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(),
                         st.text(max_size=12))
json_values = st.recursive(json_scalars, lambda children: st.one_of(
    st.lists(children, max_size=5), st.dictionaries(st.text(max_size=8), children, max_size=5)), max_leaves=25)
part_number = st.one_of(st.integers(-3, 10003), st.integers(1, 3), st.integers(), st.booleans(), st.none(),
                        st.floats(), st.text(max_size=5), st.sampled_from(["1", "01", "1.0", 1.0, 2**63, -(2**63)]))
part_checksum = st.one_of(st.none(), st.binary(min_size=16, max_size=16).map(lambda b: base64.b64encode(b).decode()),
                          st.binary(min_size=32, max_size=32).map(lambda b: base64.b64encode(b).decode()),
                          st.text(max_size=50), st.integers(), st.lists(st.integers(), max_size=2), b64)
part_item = st.one_of(part_number, st.fixed_dictionaries({"number": part_number}, optional={"checksum": part_checksum}),
                      json_values)
length_value = st.one_of(st.integers(-5, 2**70), st.sampled_from([0, 1, 100, 12 * MiB, 5 * MiB, 50 * 1024**3]),
                         st.floats(), st.text(max_size=8), st.booleans(), st.none())
parts_body_value = st.one_of(
    st.fixed_dictionaries({}, optional={
        "parts": st.one_of(st.lists(part_item, max_size=8), st.lists(st.integers(1, 3), min_size=1, max_size=3),
                           json_values),
        "length": length_value, "extra": json_values}),
    json_values,
)
valid_parts_value = st.fixed_dictionaries(
    {"parts": st.lists(st.one_of(st.integers(1, 3), st.fixed_dictionaries(
        {"number": st.integers(1, 3)}, optional={"checksum": st.one_of(part_checksum, st.sampled_from(
            [base64.b64encode(b"\x00" * 16).decode(), base64.b64encode(b"\x00" * 32).decode()]))})),
        min_size=1, max_size=3)},
    optional={"length": st.one_of(st.sampled_from([1, 100, PART, 2 * PART, 12 * MiB, 50 * 1024**3]), length_value)})
parts_body = st.one_of(
    valid_parts_value.map(lambda v: json.dumps(v).encode()),
    valid_parts_value.map(lambda v: json.dumps(v).encode()),
    parts_body_value.map(lambda v: json.dumps(v).encode()),
    parts_body_value.map(lambda v: json.dumps(v).encode("utf-16")),
    st.binary(max_size=200),
    st.sampled_from([b"", b"{", b"[1,2]", b"\xff\xfe", b"null", b'{"parts": [1]', b"NaN", b'{"parts":[1e400]}',
                     b'\xef\xbb\xbf{"parts":[1]}', b'{"parts":[1]} trailing', b'{"parts":[1],"parts":[2]}',
                     b'{"parts":[{"number":1,"checksum":"\\ud800"}]}', b'{"parts":[1],"length":' + b"9" * 5000 + b"}",
                     b'{"parts":[' + b",".join(b"%d" % n for n in range(1, 1100)) + b"]}", b" " * 1000]),
    st.none(),
)

URLSAFE = string.ascii_letters + string.digits + "-_"
PATH_CHARS = URLSAFE + ".~!$&'()*+,;=:@"
SQLISH = ["' or 1=1 --", "'; drop table uploads; --", '" OR ""="', "1) or (1=1", "00' OR '1'='1", "%' --",
          "00AAAAAAAAAAAAAA' union select * from uploads --", "\\'", "0 OR 1=1", "00aaaaaaaaaaaaaa--or-1-1"]
valid_looking_id = st.text(URLSAFE, min_size=16, max_size=64)
garbage_segment = st.one_of(
    st.text(max_size=60).map(lambda s: quote(s, safe="")),
    st.text(PATH_CHARS, max_size=60),
    st.lists(st.sampled_from(["%", "%2", "%zz", "%00", "%2F", "%2f", "%5C", "%2e%2e", "..", ".", "%0d%0a", "%ff",
                              "%C0%AF", "%u0041", "'", "--", "%27", ";", "%20", "+", "A", "00"]),
             max_size=12).map("".join),
    st.sampled_from(SQLISH).map(lambda s: quote(s, safe="")),
    st.integers(65, 4000).map(lambda n: "A" * n),  # too long for an id, under aiohttp's 8190-byte request line
    valid_looking_id,
)


def kinds() -> st.SearchStrategy[str]:
    return st.sampled_from((*KINDS, "unknown"))


def resolve(fuzz: Fuzz, kind: str, unknown: str) -> str:
    return unknown if kind == "unknown" else fuzz.target(kind)


def declared(value: Any) -> int | None:
    """The length a request declares, when it is one the gateway accepts as a number."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


# -- fuzzing tests ----------------------------------------------------------------------------------------


valid_metadata = st.lists(
    st.tuples(st.sampled_from(["filename", "filetype", "name", "relativePath", "x"]),
              st.one_of(st.none(), printable_unicode.map(lambda v: base64.b64encode(v.encode()).decode()))),
    max_size=4, unique_by=lambda kv: kv[0]).map(
    lambda pairs: ",".join(k if v is None else f"{k} {v}" for k, v in pairs))
CREATION_FIELDS: dict[str, st.SearchStrategy[str | None]] = {
    "Upload-Length": st.one_of(st.integers(0, 20 * MiB).map(str), numeric_header),
    "Upload-Defer-Length": st.one_of(st.just("1"), st.sampled_from(["0", "2", " 1", "true"]), header_text),
    "Upload-Metadata": st.one_of(valid_metadata, metadata_header),
    "Upload-Part-Size": st.one_of(st.just(str(PART)), st.integers(PART - 1, PART + 1).map(str),
                                  st.integers(5 * 1024**3, 5 * 1024**3 + 1).map(str), numeric_header),
    "Upload-Part-Checksum": st.one_of(st.sampled_from(["md5", "crc32c", "sha256", "SHA256", " md5 ", "sha1", "crc32",
                                                       ""]), header_text),
    "Upload-Concat": st.one_of(st.sampled_from(["partial", "final;/files/a /files/b", ""]), header_text),
    "X-HTTP-Method-Override": st.one_of(st.sampled_from(["PATCH", "HEAD", "DELETE", "GET", "post"]), header_text),
    "Content-Type": content_type,
}


@st.composite
def creation_requests(draw: st.DrawFn) -> tuple[str, list[tuple[str, str | None]], bytes | None]:
    """Mostly a valid creation with one or two fields fuzzed, sometimes every field at random."""
    method = draw(mostly(st.just("POST"), st.sampled_from(["PUT", "GET", "PATCH", "DELETE"]), 9))
    body = draw(st.one_of(st.none(), st.none(), st.binary(max_size=300)))
    fields: dict[str, str | None] = {name: None for name in CREATION_FIELDS}
    if draw(mostly(st.just(True), st.just(False), 7)):
        if draw(st.booleans()):
            fields["Upload-Length"] = str(draw(st.sampled_from([0, 1, 100, PART, 2 * PART + 1, 50 * 1024**3])))
        else:
            fields["Upload-Defer-Length"] = "1"
        if draw(st.booleans()):
            fields["Upload-Metadata"] = draw(valid_metadata)
        if draw(st.booleans()):
            fields["Upload-Part-Size"] = str(PART)
        if draw(st.booleans()):
            fields["Upload-Part-Checksum"] = draw(st.sampled_from(["md5", "crc32c", "sha256"]))
        if body is not None and draw(st.booleans()):
            fields["Content-Type"] = OCTETS
        for name in draw(st.lists(st.sampled_from(sorted(CREATION_FIELDS)), max_size=2, unique=True)):
            fields[name] = draw(st.one_of(st.none(), CREATION_FIELDS[name]))
    else:
        for name, strategy in CREATION_FIELDS.items():
            fields[name] = draw(st.one_of(st.none(), strategy))
    fields["Upload-Checksum"] = draw(upload_checksum(body or b""))
    return method, list(fields.items()), body


@fuzz_settings(600)
@given(tus=tus_version, request=creation_requests())
def test_fuzz_creation(fz: Fuzz, tus: str | None, request: tuple[str, list[tuple[str, str | None]], bytes | None]
                       ) -> None:
    method, pairs, body = request
    headers = base_headers(fz, tus, f"Bearer {fz.creator_token}") + other_headers(pairs)
    meta = dict(pairs).get("Upload-Metadata")
    reply = exchange(fz, method, fz.gw.files(), headers, body)
    if reply.status != 201:
        return
    # Created: what HEAD echoes is the canonical form of the metadata (keys as sent, strict base64).
    location = reply.header("Location") or ""
    upload_id = location.rsplit("/", 1)[-1]
    assert re.fullmatch(r"[A-Za-z0-9_-]{16,64}", upload_id), location
    auth = [("Authorization", f"Bearer {fz.creator_token}"), *TUS.items()]
    head = fz.gw.request("HEAD", fz.gw.files(f"/{upload_id}"), auth)
    assert head.status == 200, head.status
    echoed = head.header("Upload-Metadata")
    expected = tus_wire.parse_metadata(server_view(meta)) if meta else {}
    if not expected:
        assert echoed is None
    else:
        assert echoed is not None
        pair = r"[\x21-\x2b\x2d-\x7e]+( [A-Za-z0-9+/]*={0,2})?"
        assert re.fullmatch(rf"{pair}(,{pair})*", echoed), echoed
        pairs_echoed = [item.split(" ") for item in echoed.split(",")]
        assert [p[0] for p in pairs_echoed] == list(expected)
    key = fz.gw.upload_row(upload_id)["s3_key"]
    assert key == f"{fz.gw.settings.s3_key_prefix}/{upload_id[2:4]}/{upload_id}"
    fz.discard(upload_id, fz.creator_token)


@fuzz_settings(500)
@given(kind=kinds(), unknown=valid_looking_id, tus=tus_version,
       method=st.sampled_from(["HEAD", "HEAD", "GET", "DELETE", "POST", "OPTIONS", "PUT", "PATCH"]),
       override=st.one_of(st.none(), st.sampled_from(["HEAD", "PATCH", "DELETE", "GET", "head", " DELETE "]),
                          header_text),
       accept=st.one_of(st.none(), st.just("application/json"), header_text),
       extra=st.dictionaries(st.sampled_from(["Upload-Offset", "Upload-Length", "Upload-Metadata", "Origin",
                                              "X-Request-Id", "Content-Type", "Upload-Concat", "Range"]),
                             header_text, max_size=3))
def test_fuzz_upload_resource(fz: Fuzz, kind: str, unknown: str, tus: str | None, method: str,
                              override: str | None, accept: str | None, extra: dict[str, str]) -> None:
    """HEAD/GET/DELETE/OPTIONS (and POST with X-HTTP-Method-Override) on /files/{id}."""
    upload_id = resolve(fz, kind, unknown)
    headers = base_headers(fz, tus) + other_headers([("X-HTTP-Method-Override", override), ("Accept", accept)])
    headers += list(extra.items())
    reply = exchange(fz, method, fz.gw.files(f"/{upload_id}"), headers, None, target=upload_id)
    effective = (override or "").strip().upper() if method == "POST" else method
    if kind == "foreign":
        indistinguishable(fz, reply, method, fz.gw.files(f"/{unknown}"), headers, None)
    if kind == "terminated" and reply.status < 300 and method != "OPTIONS":
        assert effective == "DELETE", (method, override, reply.status)


@st.composite
def patch_requests(draw: st.DrawFn) -> dict[str, Any]:
    body = draw(st.binary(max_size=200))
    return {
        "body": body,
        "offset": draw(mostly(st.sampled_from(["0", "0", "0", "10", "100"]), st.one_of(numeric_header, st.none()), 7)),
        "content_type": draw(mostly(st.just(OCTETS), st.one_of(content_type, st.none()), 7)),
        "length": draw(st.one_of(st.none(), st.none(), st.none(),
                                 st.sampled_from(["100", str(12 * MiB), "0", "5", "10", str(2 * PART)]),
                                 numeric_header)),
        "checksum": draw(upload_checksum(body)),
        "override": draw(st.booleans()),
    }


@fuzz_settings(520)
@given(kind=kinds(), unknown=valid_looking_id, tus=tus_version, request=patch_requests())
def test_fuzz_patch(fz: Fuzz, kind: str, unknown: str, tus: str | None, request: dict[str, Any]) -> None:
    upload_id = resolve(fz, kind, unknown)
    pairs = [("Upload-Offset", request["offset"]), ("Content-Type", request["content_type"]),
             ("Upload-Length", request["length"]), ("Upload-Checksum", request["checksum"])]
    if request["override"]:
        pairs.append(("X-HTTP-Method-Override", "PATCH"))
    headers = base_headers(fz, tus) + other_headers(pairs)
    length = request["length"]
    declared_length = int(length.strip()) if length is not None and re.fullmatch(r"[0-9]{1,19}", length.strip()) \
        else None
    reply = exchange(fz, "POST" if request["override"] else "PATCH", fz.gw.files(f"/{upload_id}"), headers,
                     request["body"], target=upload_id,
                     declared_length=declared_length if kind == "deferred" else None)
    if reply.status == 204 and kind not in ("completed",):
        offset = int(reply.header("Upload-Offset") or -1)
        assert offset >= 0 and reply.header("Upload-Expires"), reply.headers
    if kind == "foreign":
        indistinguishable(fz, reply, "POST" if request["override"] else "PATCH", fz.gw.files(f"/{unknown}"), headers,
                          request["body"])


@fuzz_settings(640)
@given(kind=kinds(), unknown=valid_looking_id, body=parts_body,
       method=mostly(st.sampled_from(["POST", "POST", "PUT", "PUT", "GET"]), st.sampled_from(["DELETE", "PATCH"]), 9),
       ctype=st.one_of(st.none(), st.just("application/json"), header_text),
       tus=st.one_of(st.none(), st.none(), tus_version))
def test_fuzz_parts_json(fz: Fuzz, kind: str, unknown: str, body: bytes | None, method: str, ctype: str | None,
                         tus: str | None) -> None:
    """POST (sign) / PUT (confirm) / GET (list) /files/{id}/parts with arbitrary bodies."""
    upload_id = resolve(fz, kind, unknown)
    headers = base_headers(fz, tus) + other_headers([("Content-Type", ctype)])
    declared_length = None
    if method == "POST" and kind == "deferred" and body is not None:
        try:
            value = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            value = None
        if isinstance(value, dict):
            declared_length = declared(value.get("length"))
    reply = exchange(fz, method, fz.gw.files(f"/{upload_id}/parts"), headers, body, target=upload_id,
                     declared_length=declared_length)
    if reply.status == 200 and method == "POST":
        signed = reply.json()
        assert signed["parts"] and all(p["method"] == "PUT" and "X-Amz-Signature=" in p["url"]
                                       for p in signed["parts"])
    if kind == "foreign":
        indistinguishable(fz, reply, method, fz.gw.files(f"/{unknown}/parts"), headers, body)


part_segment = st.one_of(
    st.integers(-5, 10005).map(str),
    st.integers(1, 3).map(str),
    st.integers(0, 10**30).map(str),
    st.text(max_size=8).map(lambda s: quote(s, safe="")),
    st.text(st.characters(categories=("Nd", "No", "Nl")), min_size=1, max_size=3).map(lambda s: quote(s, safe="")),
    st.sampled_from(["0", "00001", "000001", "1.0", "-1", "+1", "%201", "1%20", "0x1", "%31", "1%00", "%2e", "1e2",
                     quote("١"), quote("²"), quote("¹"), quote("③"), quote("𝟏"), quote("Ⅻ"), "1" * 6, "99999",
                     "10000", "10001"]),
)


@fuzz_settings(380)
@given(kind=kinds(), unknown=valid_looking_id, number=part_segment,
       method=mostly(st.just("PUT"), st.sampled_from(["GET", "POST", "DELETE", "OPTIONS"])),
       tus=st.one_of(st.none(), tus_version), body=st.one_of(st.none(), st.binary(max_size=50)))
def test_fuzz_confirm_one(fz: Fuzz, kind: str, unknown: str, number: str, method: str, tus: str | None,
                          body: bytes | None) -> None:
    """PUT /files/{id}/parts/{n} with any n."""
    upload_id = resolve(fz, kind, unknown)
    reply = exchange(fz, method, fz.gw.files(f"/{upload_id}/parts/{number}"), base_headers(fz, tus), body,
                     target=upload_id)
    if kind == "foreign":
        indistinguishable(fz, reply, method, fz.gw.files(f"/{unknown}/parts/{number}"), base_headers(fz, tus), body)


@st.composite
def garbage_paths(draw: st.DrawFn, fuzz_targets: Sequence[str]) -> str:
    segment = draw(garbage_segment)
    real = draw(st.sampled_from(list(fuzz_targets)))
    shape = draw(st.integers(0, 9))
    suffix = draw(st.sampled_from(["", "/", "/parts", "/parts/", "/parts/1", "/x", "/parts/1/x", "?a=b",
                                   "?partNumber=1&uploadId=x", "#frag", "/.."]))
    return [
        f"/files/{segment}{suffix}",
        f"/files/{segment}",
        f"/files/{real}/{segment}",
        f"/files/{real}/parts/{segment}",
        f"/files/{segment}/parts/{segment}",
        f"/{segment}",
        f"/files{'/..' * draw(st.integers(1, 4))}/files/{real}",
        f"//files/{real}{suffix}",
        f"/FILES/{real}{suffix}",
        f"/files/{real}%2Fparts",
    ][shape]


@fuzz_settings(500)
@given(data=st.data(), method=st.sampled_from(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE",
                                               "PROPFIND"]),
       tus=tus_version, body=st.one_of(st.none(), st.binary(max_size=64)))
def test_fuzz_paths(fz: Fuzz, data: st.DataObject, method: str, tus: str | None, body: bytes | None) -> None:
    """Garbage ids and paths: %-escapes, SQL-ish text, unicode, very long segments, dot segments."""
    targets = [fz.target(k) for k in KINDS]
    path = data.draw(st.one_of(garbage_paths(targets),
                               st.sampled_from(["/healthz", "/readyz", "/metrics", "/", "/files", "/files/"])))
    exchange(fz, method, path, base_headers(fz, tus), body)


garbage_authorization = st.one_of(
    st.sampled_from(["", " ", "Bearer", "Bearer ", "Bearer  ", "Basic YWxpY2U6cGFzcw==", "Bearer a.b.c", "Bearer ...",
                     "Bearer eyJhbGciOiJub25lIn0.e30.", "Bearer null", "Token abc", "Bearer \t"]),
    st.text(FIELD_CHARS, max_size=60).map(lambda s: f"Bearer {s}"),
    header_text,
    printable_unicode.map(lambda s: "Bearer " + wire(s)),
    st.tuples(st.integers(0, 200), st.sampled_from("abcXYZ019-_.")).map(lambda t: ("tamper", t)),
    st.sampled_from(["expired", "other-secret", "no-sub", "wrong-aud", "wrong-iss"]).map(lambda t: (t, None)),
)


def forge(fuzz: Fuzz, spec: Any) -> str:
    if isinstance(spec, str):
        return spec
    kind, arg = spec
    if kind == "tamper":
        position, char = arg
        raw = fuzz.token
        i = position % len(raw)
        replaced = raw[:i] + (char if raw[i] != char else ("b" if char != "b" else "c")) + raw[i + 1:]
        return f"Bearer {replaced}"
    if kind == "expired":
        return f"Bearer {token(fuzz.subject, ttl=-3600)}"
    if kind == "other-secret":
        return f"Bearer {token(fuzz.subject, secret='another-secret-' + 'y' * 40)}"
    if kind == "no-sub":
        return f"Bearer {token('')}"
    if kind == "wrong-aud":
        return f"Bearer {token(fuzz.subject, audience='someone-else')}"
    return f"Bearer {token(fuzz.subject, issuer='https://evil.test')}"


ENDPOINTS = [("POST", ""), ("HEAD", "/{id}"), ("PATCH", "/{id}"), ("DELETE", "/{id}"), ("GET", "/{id}"),
             ("POST", "/{id}/parts"), ("PUT", "/{id}/parts"), ("GET", "/{id}/parts"), ("PUT", "/{id}/parts/1")]


@fuzz_settings(320)
@given(spec=garbage_authorization, endpoint=st.sampled_from(ENDPOINTS), kind=kinds(), unknown=valid_looking_id)
@example(spec="Bearer \xe9", endpoint=("POST", ""), kind="active", unknown="A" * 16)
def test_fuzz_authorization(fz: Fuzz, spec: Any, endpoint: tuple[str, str], kind: str, unknown: str) -> None:
    """A request without a valid token is a 401 with WWW-Authenticate: Bearer, whatever it asks."""
    authorization = forge(fz, spec)
    method, template = endpoint
    upload_id = resolve(fz, kind, unknown)
    headers = [("Authorization", authorization), *TUS.items(), ("Upload-Length", "10"),
               ("Content-Type", OCTETS), ("Upload-Offset", "0")]
    body = b'{"parts": [1]}' if "parts" in template and method != "GET" else (b"x" if method == "PATCH" else None)
    reply = exchange(fz, method, fz.gw.files(template.format(id=upload_id)), headers, body, target=upload_id)
    assert reply.status == 401, (authorization, reply.status, reply.body)


# -- known bugs: exact reproductions ---------------------------------------------------------------------


def _fresh(fz: Fuzz, kind: str) -> str:
    fz.renew(kind)
    return fz.targets[kind]


def test_metadata_value_with_nul_is_400(fz: Fuzz) -> None:
    headers = [("Authorization", f"Bearer {fz.creator_token}"), *TUS.items(), ("Upload-Length", "10"),
               ("Upload-Metadata", "filename YQBi")]
    reply = fz.gw.request("POST", fz.gw.files(), headers)
    assert reply.status == 400 and _error_code(reply) == "invalid_metadata", reply.body


@pytest.mark.parametrize("checksum", ["", "sha3 AAAA", "sha1 !!!"])
def test_refused_creation_with_upload_creates_nothing(fz: Fuzz, checksum: str) -> None:
    before = fz.snapshot()
    headers = [("Authorization", f"Bearer {fz.creator_token}"), *TUS.items(), ("Upload-Length", "100"),
               ("Content-Type", OCTETS), ("Upload-Checksum", checksum)]
    reply = fz.gw.request("POST", fz.gw.files(), headers, b"\x00")
    changes = diff(before, fz.snapshot())
    assert reply.status == 400
    assert changes == {}


def test_refused_sign_declares_no_length(fz: Fuzz) -> None:
    upload_id = _fresh(fz, "deferred")
    before = fz.snapshot()
    reply = fz.gw.request("POST", fz.gw.files(f"/{upload_id}/parts"), fz.auth, b'{"parts": [1, 1], "length": 100}')
    changes = diff(before, fz.snapshot())
    fz.renew("deferred")
    assert reply.status == 400 and _error_code(reply) == "invalid_request"
    assert changes == {}


def test_refused_patch_declares_no_length(fz: Fuzz) -> None:
    upload_id = _fresh(fz, "deferred")
    before = fz.snapshot()
    headers = [*fz.auth, ("Content-Type", OCTETS), ("Upload-Offset", "0"), ("Upload-Length", "5")]
    reply = fz.gw.request("PATCH", fz.gw.files(f"/{upload_id}"), headers, b"x" * 10)
    changes = diff(before, fz.snapshot())
    fz.renew("deferred")
    assert reply.status == 413
    assert changes == {}


def test_superscript_part_number_is_400(fz: Fuzz) -> None:
    upload_id = fz.target("active")
    reply = fz.gw.request("PUT", fz.gw.files(f"/{upload_id}/parts/%C2%B2"), fz.auth)
    assert reply.status == 400 and _error_code(reply) == "unknown_part"


@pytest.mark.parametrize("method", ["POST", "PUT"])
def test_deeply_nested_json_is_400(fz: Fuzz, method: str) -> None:
    upload_id = fz.target("active")
    before = fz.snapshot()
    reply = fz.gw.request(method, fz.gw.files(f"/{upload_id}/parts"), fz.auth, b'{"parts": ' + b"[" * 100_000)
    assert diff(before, fz.snapshot()) == {}
    assert reply.status == 400 and _error_code(reply) == "invalid_request"


@pytest.mark.xfail(strict=True, reason=(
    "BUG (low; aiohttp's protocol layer, before any middleware): requests aiohttp's parser refuses get its "
    "plain-text '400 Bad Request' instead of the JSON error body (and without Tus-Resumable): a request line "
    "or a header field longer than 8190 bytes (LineTooLong), or a repeated singleton header such as two "
    "Content-Type lines (BadHttpMessage), or a method llhttp does not know ('FOO'). "
    "Repro: GET /files/<10,000 x 'a'>"))
@pytest.mark.parametrize("where", ["path", "header", "duplicate", "method"])
def test_bug_parser_refusals_are_not_json(fz: Fuzz, where: str) -> None:
    if where == "path":
        reply = fz.gw.request("GET", fz.gw.files("/" + "a" * 10_000), fz.auth)
    elif where == "header":
        reply = fz.gw.request("POST", fz.gw.files(), [*fz.auth, ("Upload-Metadata", "a" * 9000)])
    elif where == "duplicate":
        reply = fz.gw.request("GET", fz.gw.files(f"/{fz.target('active')}/parts"),
                              [*fz.auth, ("Content-Type", "a/b"), ("Content-Type", "a/b")])
    else:
        reply = fz.gw.request("FOO", fz.gw.files(f"/{fz.target('active')}"), fz.auth)
    assert 400 <= reply.status < 500
    check_reply("GET", reply)
