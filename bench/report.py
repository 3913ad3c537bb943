"""The markdown table (docs/bench.md) and the chart (docs/bench.png) of one benchmark run."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from bench.common import MiB

PEER_CONFIG = """\
How each contender runs (all on 127.0.0.1, against the same PostgreSQL and SeaweedFS):

- **gateway**: `gateway serve`, one process, production defaults (JWT checked on every request, JSON
  access log on, DB pool 40) except the per-owner rate limits, which are off
  (`GATEWAY_RATE_LIMIT_PARTS=0`, `GATEWAY_RATE_LIMIT_HEAD=0`) because no peer has any; the load is
  spread over many owners (one per simulated client), as in production.
- **@tus/server + @tus/s3-store**: `new Server({path: '/files', datastore: new S3Store({partSize,
  s3ClientConfig: {bucket, region, endpoint, forcePathStyle: true, credentials}})})` on
  `http.createServer`, everything else default (MemoryLocker, in-memory metadata cache, no auth);
  `partSize` = the gateway's part size for the same file. Its HEAD asks S3 every time (ListParts +
  HeadObject of the `.part` object); its POST does CreateMultipartUpload + PutObject of the `.info`.
- **Uppy Companion**: `companion.app({s3: {key, secret, bucket, endpoint, region, forcePathStyle: true,
  expires: 900, awsClientOptions: {requestChecksumCalculation: 'WHEN_REQUIRED'}}, server, filePath,
  secret, corsOrigins: true})` mounted in Express, no auth, metrics on (its default). Its URLs do not
  pin Content-Length; the gateway's do (and are checked against the upload's part plan and Postgres).
- **floor**: `bench/floor_server.py`, bare aiohttp + asyncpg on uvloop, one indexed statement per request, no
  auth, no S3, no logging: the ceiling for this stack (Python + Postgres on this machine).
- **load**: `bench/loadgen.py`, a closed loop of N keep-alive HTTP/1.1 connections in its own process
  (raw asyncio protocol; aiohttp's client costs ~6x more CPU per request and became the bottleneck on
  the floor server). Its CPU use is checked; a note appears when it nears one core.
- **throughput clients**: DirectUploader (direct path), the same aiohttp part reader for raw presigned
  PUTs (botocore presigns; no gateway: the limit), tus-js-client in Node for the proxy path and
  @tus/server. One upload at a time; CPU and RSS are the serving process's, from /proc.
"""


def _n(value: float | None, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:,.{digits}f}"


def _ratio(ours: float | None, other: float | None) -> str:
    if not ours or not other or math.isnan(ours) or math.isnan(other):
        return "–"
    value = ours / other
    return f"{value:.2f}×" if value < 10 else f"{value:.1f}×"


def _lat(run: dict[str, Any]) -> str:
    return f"{_n(run['p50_ms'], 1)} / {_n(run['p99_ms'], 1)}"


def _row(*cells: object) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _signing(sign: dict[str, Any]) -> list[str]:
    ours = sign["gateway"]["urls_per_s"]
    how = f"HTTP, {sign['clients']} clients, {sign['batch']} parts per request"
    loop = "in-process loop, 1 thread"

    def per_url(run: dict[str, Any]) -> str:
        cores = run.get("cpu_cores", {}).get("server")
        return _n(cores / run["urls_per_s"] * 1e6, 1) if cores and run["urls_per_s"] else "–"

    g, c = sign["gateway"], sign["companion"]
    b, lim = sign["botocore"]["urls_per_s"], sign["signer"]["urls_per_s"]
    return [
        "", "## Signing: presigned UploadPart URLs per second", "",
        _row("signer", "how", "URLs/s", "p50 / p99 ms per request", "server CPU µs per URL", "gateway ÷ this"),
        "|---|---|---:|---:|---:|---:|",
        _row("**gateway** `POST /files/{id}/parts`", how, f"**{_n(ours)}**", _lat(g), per_url(g), "1.00×"),
        _row("Uppy Companion `GET /s3/multipart/:uploadId/batch`", how, _n(c["urls_per_s"]), _lat(c), per_url(c),
             _ratio(ours, c["urls_per_s"])),
        _row("botocore `generate_presigned_url`", loop, _n(b), "–", _n(1e6 / b, 1), _ratio(ours, b)),
        _row("limit: the gateway's SigV4 signer alone", "in-process, batches of 100, 1 thread", _n(lim), "–",
             _n(1e6 / lim, 1), _ratio(ours, lim)),
    ]


def _rates(rates: dict[str, Any]) -> list[str]:
    out = ["", "## Request rate: requests/s (p50 / p99 latency in ms)", "",
           _row("request", "connections", "**gateway**", "@tus/server + s3-store", "floor (aiohttp + asyncpg)",
                "gateway ÷ @tus/server", "gateway ÷ floor"),
           "|---|---:|---:|---:|---:|---:|---:|"]
    combos = [tuple(key.split()[:2]) for key in rates if key.endswith(" gateway")]
    for method, conns in combos:
        g, t, f = (rates[f"{method} {conns} {x}"] for x in ("gateway", "tus", "floor"))
        out.append(_row("HEAD (offset)" if method == "HEAD" else "POST (create)", conns,
                        f"**{_n(g['rps'])}** ({_lat(g)})", f"{_n(t['rps'])} ({_lat(t)})", f"{_n(f['rps'])} ({_lat(f)})",
                        _ratio(g["rps"], t["rps"]), _ratio(g["rps"], f["rps"])))

    def cost(run: dict[str, Any]) -> str:
        ms, cores = run.get("cpu_ms_per_request", {}), run.get("cpu_cores", {})
        if not ms:
            return "–"
        return (f"{ms.get('server', 0):.2f} + {ms.get('postgres', 0):.2f} + {ms.get('seaweedfs', 0):.2f} "
                f"({cores.get('server', 0):.2f})")

    out += ["", "CPU per request in ms, server + PostgreSQL + SeaweedFS (from /proc during the same runs; "
            "in parentheses the cores the server process used):", "",
            _row("request", "connections", "**gateway**", "@tus/server + s3-store", "floor"),
            "|---|---:|---:|---:|---:|"]
    for method, conns in combos:
        out.append(_row(method, conns, *(cost(rates[f"{method} {conns} {x}"]) for x in ("gateway", "tus", "floor"))))
    raw = [(conns, rates[f"POST {conns} gateway"], rates[f"POST {conns} s3"]) for method, conns in combos
           if method == "POST" and f"POST {conns} s3" in rates]
    if raw:
        out += ["", "A creation against the S3 call it cannot avoid: CreateMultipartUpload requests signed once and "
                "replayed by the same load generator straight to SeaweedFS:", "",
                _row("connections", "**gateway** creates/s", "raw CreateMultipartUpload/s", "gateway ÷ raw"),
                "|---:|---:|---:|---:|"]
        out += [_row(conns, f"**{_n(g['rps'])}**", _n(r["rps"]), _ratio(g["rps"], r["rps"])) for conns, g, r in raw]
    return out


# What each request costs the gateway, and what it asks of Postgres and S3 (from the code: docs/architecture.md).
_REQUEST_IO = {
    "HEAD": ("1", "0 (a ListParts only to reconcile parts signed but not confirmed, at most every 3 s)"),
    "create": ("1", "1 (CreateMultipartUpload)"),
    "sign": ("2 (read, record the batch)", "0"),
    "part": ("≈ 2 per confirm (read, record) + 2 per sign batch", "1 ListParts per confirm"),
    "patch": ("2–3 per part (read, record, stash)", "1 UploadPart per part"),
}


def _cost_table(results: dict[str, Any]) -> list[str]:
    rates, sign, tp = results.get("rates") or {}, results.get("signing"), results.get("throughput")
    rows = []

    def per_request(run: dict[str, Any] | None, name: str) -> str:
        ms = (run or {}).get("cpu_ms_per_request", {}).get(name)
        return _n(ms * 1000) if ms is not None else "–"

    for label, key, io in (("HEAD (offset), 64 connections", "HEAD 64 gateway", "HEAD"),
                           ("POST (create), 64 connections", "POST 64 gateway", "create")):
        if key in rates:
            rows.append(_row(label, per_request(rates[key], "server"), per_request(rates[key], "postgres"),
                             *_REQUEST_IO[io]))
    if sign:
        g = sign["gateway"]
        cores, pg = g.get("cpu_cores", {}).get("server"), g.get("cpu_cores", {}).get("postgres")
        per = 1e6 * sign["batch"] / g["urls_per_s"] if g["urls_per_s"] else None
        rows.append(_row(f"POST /files/{{id}}/parts, {sign['batch']} URLs",
                         _n(cores * per) if cores and per else "–", _n(pg * per) if pg and per else "–",
                         *_REQUEST_IO["sign"]))
    if tp:
        part_mib = tp["part_size"] // MiB
        for name, row in tp["rows"].items():
            ms = row.get("cpu_ms_per_part")
            if ms is None:
                continue
            if name.startswith("direct"):
                rows.append(_row(f"one {part_mib} MiB part, direct path, {name.removeprefix('direct p')} in flight "
                                 "(sign + PUT to S3 + confirm)", _n(ms * 1000), "–", *_REQUEST_IO["part"]))
            elif name == "proxy":
                rows.append(_row(f"one {part_mib} MiB part through a tus PATCH (proxy path)", _n(ms * 1000), "–",
                                 *_REQUEST_IO["patch"]))
    if not rows:
        return []
    return ["", "## Cost per request", "",
            "Gateway CPU per request, measured in the sections above (PostgreSQL's where it was measured), "
            "and the round trips each makes; the capacity figures in the README are computed from these.", "",
            _row("request", "gateway CPU µs", "PostgreSQL CPU µs", "SQL statements", "S3 calls"),
            "|---|---:|---:|---|---|", *rows]


def _goals(results: dict[str, Any]) -> list[str]:
    """The cost goals, each as this run measured it."""
    rates, sign, tp = results.get("rates") or {}, results.get("signing"), results.get("throughput")
    rows = []

    def add(measure: str, value: float | None, goal: float, text: str) -> None:
        if value is not None:
            shown = f"{value:,.0f}" if goal >= 100 else f"{value:.2f}"
            rows.append(_row(measure, shown, text, "yes" if value >= goal else "**no**"))

    def ratio(a: str, b: str) -> float | None:
        return rates[a]["rps"] / rates[b]["rps"] if a in rates and b in rates and rates[b]["rps"] else None

    add("HEAD/s ÷ floor, 64 connections", ratio("HEAD 64 gateway", "HEAD 64 floor"), 0.85, "≥ 0.85")
    add("creates/s ÷ @tus/server, 64 connections", ratio("POST 64 gateway", "POST 64 tus"), 1.6, "≥ 1.6")
    add("creates/s ÷ raw CreateMultipartUpload/s, 64 connections", ratio("POST 64 gateway", "POST 64 s3"), 0.75,
        "≥ 0.75")
    if sign:
        add(f"presigned URLs/s ({sign['batch']} per request)", sign["gateway"]["urls_per_s"], 50_000, "≥ 50,000")
    if tp:
        prows = tp["rows"]
        for name, row in prows.items():
            raw = prows.get(name.replace("direct", "raw"), {}).get("mb_per_s")
            if name.startswith("direct") and raw:
                add(f"direct MB/s ÷ raw PUTs, {name.removeprefix('direct p')} in flight", row["mb_per_s"] / raw, 0.95,
                    "≥ 0.95")
        parts = [r["cpu_ms_per_part"] for n, r in prows.items() if n.startswith("direct") and r.get("cpu_ms_per_part")
                 is not None]
        if parts:
            worst = max(parts)
            rows.append(_row("gateway CPU ms per direct part (worst of the parallelisms)", f"{worst:.2f}", "≤ 0.5",
                             "yes" if worst <= 0.5 else "**no**"))
    if not rows:
        return []
    return ["", "## Cost goals", "", _row("measure", "this run", "goal", "met"), "|---|---:|---|---|", *rows]


def _throughput(tp: dict[str, Any]) -> list[str]:
    rows = tp["rows"]
    size = tp["size"]
    size_text = f"{size / 2**30:g} GiB" if size >= 2**30 else f"{size / MiB:g} MiB"
    chunk = f"{tp['chunk_size'] // MiB} MiB" if tp["chunk_size"] else "Infinity"
    peer = rows.get("tus-server", {}).get("mb_per_s")
    raw1 = rows.get("raw p1", {}).get("mb_per_s")
    reps = tp.get("reps", 1)
    best = f", best of {reps} interleaved repetitions" if reps > 1 else ""
    out = ["", f"## Throughput and cost: one {size_text} upload at a time (parts of {tp['part_size'] // MiB} MiB"
           f"{best})", "",
           _row("path", "in flight", "MB/s", "÷ peer", "÷ limit", "server CPU s/GiB", "gateway CPU ms per part",
                "server peak RSS MiB"),
           "|---|---:|---:|---:|---:|---:|---:|---:|"]

    def cost(row: dict[str, Any]) -> tuple[str, str, str]:
        return _n(row["cpu_s_per_gib"], 3), _n(row.get("cpu_ms_per_part"), 2), _n(row["peak_rss_mib"])

    for name, row in rows.items():
        if name.startswith("direct"):
            p = name.removeprefix("direct p")
            raw = rows.get(f"raw p{p}", {}).get("mb_per_s")
            out.append(_row("**direct** (DirectUploader → S3)", p, f"**{_n(row['mb_per_s'])}**",
                            _ratio(row["mb_per_s"], peer), _ratio(row["mb_per_s"], raw), *cost(row)))
    if "proxy" in rows:
        row = rows["proxy"]
        out.append(_row(f"**proxy** (tus-js-client → gateway → S3, chunkSize {chunk})", 1, f"**{_n(row['mb_per_s'])}**",
                        _ratio(row["mb_per_s"], peer), _ratio(row["mb_per_s"], raw1), *cost(row)))
    if "tus-server" in rows:
        row = rows["tus-server"]
        out.append(_row(f"peer: tus-js-client → @tus/server + s3-store (chunkSize {chunk})", 1, _n(row["mb_per_s"]),
                        "1.00×", _ratio(row["mb_per_s"], raw1), *cost(row)))
    for name, row in rows.items():
        if name.startswith("raw"):
            out.append(_row("limit: raw presigned PUTs (botocore, no gateway)", name.removeprefix("raw p"),
                            _n(row["mb_per_s"]), "–", "1.00×", "–", "–", "–"))
    out += ["", "Server CPU is the gateway process's (the @tus/server process's on its row) during the whole "
            f"upload, including background work: idle, the gateway used {tp['gateway_idle_cores']:.3f} cores. "
            "CPU per part is the gateway's beyond that idle use, over the upload's parts (direct: signing, "
            "confirms and completion; proxy: streaming the part's bytes through). "
            "Raw PUTs reach no server of ours. MB/s = 10^6 bytes/s over the upload's wall time "
            "(for tus-js-client from start() to onSuccess)."]
    if "tus-server" in rows:
        t = rows["tus-server"]
        parts = []
        if "proxy" in rows:
            proxy = rows["proxy"]
            parts.append(f"proxy path {_ratio(proxy['cpu_s_per_gib'], t['cpu_s_per_gib'])} of @tus/server's CPU "
                         f"per GiB and {_ratio(proxy['peak_rss_mib'], t['peak_rss_mib'])} of its peak RSS")
        direct = [r["cpu_s_per_gib"] for n, r in rows.items() if n.startswith("direct")]
        if direct:
            parts.append(f"direct path at most {_ratio(max(direct), t['cpu_s_per_gib'])} of its CPU per GiB")
        out += ["", "Cost, gateway ÷ @tus/server: " + "; ".join(parts) + "."]
    return out


def _scale(sc: dict[str, Any]) -> list[str]:
    def p50_p99(name: str) -> str:
        return f"{sc[name + '_p50_ms'] / 1000:.1f} / {sc[name + '_p99_ms'] / 1000:.1f} s"

    out = ["", f"## Scale: {sc['uploads']:,} uploads in flight at once", "",
           _row("uploads", "connections", "all created + signed", "all PUT + confirmed",
                "per upload p50 / p99: create+sign, PUT+confirm", "active at once (Postgres)",
                "completed, offset = length", "objects in S3", "gateway CPU", "gateway peak RSS"),
           "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
           _row(f"{sc['uploads']:,} × {sc['part'] // 1024} KiB", sc["connections"],
                f"{sc['create_sign_wall_s']:.1f} s", f"{sc['put_confirm_wall_s']:.1f} s",
                f"{p50_p99('create_sign')}, {p50_p99('put_confirm')}", f"{sc['active_at_once']:,}",
                f"{sc['completed_rows']:,}", f"{sc['objects_ok']:,}", f"{sc['gateway_cpu_s']:.1f} s",
                f"{sc['gateway_peak_rss_mib']:.0f} MiB")]
    if sc["retries"]:
        out += ["", f"{sc['retries']} retryable answers (503 or 409 part_not_visible) were retried."]
    return out


def drops_table(dr: dict[str, Any]) -> list[str]:
    """Bytes re-sent per network drop on the proxy path (bench/drops.py)."""
    size = f"{dr['size'] / MiB:g} MiB"
    part = f", gateway parts of {dr['part_size'] // MiB} MiB (@tus/s3-store the same)" if dr.get("part_size") else ""
    out = ["", f"## Network drops: bytes re-sent per drop, one {size} upload cut {dr['cuts']} times{part}", "",
           _row("tus-js-client chunkSize", "server", "drops", "re-sent MiB per drop (mean)", "per run",
                "server peak RSS MiB", "file intact"),
           "|---|---|---:|---:|---|---:|---|"]
    for chunking, servers in dr["rows"].items():
        for name, row in servers.items():
            shown = "**gateway**" if name == "gateway" else "@tus/server + s3-store"
            mean = _n(row["mean_mib_per_drop"], 2)
            runs = ", ".join([f"{v:.2f}" for v in row["per_drop_mib"]] + ["failed"] * row.get("failed", 0))
            out.append(_row(chunking, shown, row["drops"], f"**{mean}**" if name == "gateway" else mean, runs,
                            _n(row["peak_rss_mib"]), "yes" if row["ok"] else "**no**"))
    out += ["", "A TCP proxy between tus-js-client (Node) and the server aborts both sides of the connection "
            "when the bytes sent reach each of the cut points (random, the same for both servers); the client "
            "resumes by itself (HEAD, then PATCH). Re-sent = bytes sent beyond the file, request heads left "
            "out. The gateway keeps what it received since the last part boundary in memory "
            "(`GATEWAY_PROXY_BUFFER`, 16 MiB) and saves it as a stash segment when the body breaks; "
            "@tus/s3-store keeps incomplete parts in local files. File intact: S3's object has the file's "
            "sha256; a failed run (tus-js-client gave up: four retries in a row without progress) counts "
            "in no mean."]
    return out


def markdown(meta: dict[str, Any], results: dict[str, Any], notes: list[str]) -> str:
    out = ["# Benchmarks: the gateway and its peers, side by side", ""]
    out.append(f"{meta['mode']} run of `{meta['command']}` on {meta['when']}, {meta['took_s']:.0f} s: "
               f"{meta['cores']} cores ({meta['cpu']}), {meta['memory']}, Python {meta['python']}, "
               f"Node {meta['node']}, {meta['postgres']}, SeaweedFS {meta['seaweedfs']}. "
               f"Peers: {', '.join(f'{k} {v}' for k, v in meta['peers'].items())}.")
    out.append("")
    out.append("Every number below comes from this one run; servers take turns within each round. "
               "Ratios are the gateway's number divided by the other's (higher is better for rates and "
               "MB/s, lower for CPU and memory). Absolute numbers are this machine's; the ratios are the point.")
    out += _goals(results)
    sections = (("signing", _signing), ("rates", _rates), ("throughput", _throughput), ("drops", drops_table),
                ("scale", _scale))
    for key, render in sections:
        if results.get(key) is not None:
            out += render(results[key])
    out += _cost_table(results)
    if meta.get("failed"):
        out += ["", "## Sections that failed", ""] + [f"- {name}: {error}" for name, error in meta["failed"].items()]
    out += ["", "## Notes", ""]
    out += [f"- {note}" for note in notes] or ["- nothing unexpected"]
    out += ["", "## Configuration", "", PEER_CONFIG]
    return "\n".join(out).rstrip() + "\n"


def chart(results: dict[str, Any], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ours, peer, limit = "#1f6feb", "#d1495b", "#8c8c8c"
    fig, axes = plt.subplots(2, 3, figsize=(16, 9))
    fig.suptitle(title, fontsize=13)

    def bars(ax, labels, values, colors, ylabel, heading, log=False, fmt="{:,.0f}"):  # type: ignore[no-untyped-def]
        positions = range(len(labels))
        shown = [v if v is not None and not (isinstance(v, float) and math.isnan(v)) else 0 for v in values]
        rects = ax.bar(positions, shown, color=colors)
        ax.set_xticks(list(positions), labels, fontsize=8)
        ax.set_ylabel(ylabel)
        ax.set_title(heading, fontsize=10)
        if log:
            ax.set_yscale("log")
            positive = [v for v in shown if v > 0]
            if positive:
                ax.set_ylim(bottom=min(positive) / 5)
        for rect, value in zip(rects, shown, strict=True):
            ax.annotate(fmt.format(value), (rect.get_x() + rect.get_width() / 2, rect.get_height()),
                        ha="center", va="bottom", fontsize=7)
        ax.grid(axis="y", alpha=0.3)

    def grouped(ax, groups, series, ylabel, heading):  # type: ignore[no-untyped-def]
        width = 0.8 / len(series)
        for i, (name, color, values) in enumerate(series):
            xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
            rects = ax.bar(xs, values, width, label=name, color=color)
            for rect, value in zip(rects, values, strict=True):
                ax.annotate(f"{value:,.0f}", (rect.get_x() + rect.get_width() / 2, rect.get_height()),
                            ha="center", va="bottom", fontsize=6)
        ax.set_xticks(range(len(groups)), groups, fontsize=8)
        ax.set_ylabel(ylabel)
        ax.set_title(heading, fontsize=10)
        ax.legend(fontsize=7)
        ax.grid(axis="y", alpha=0.3)

    sign = results.get("signing")
    if sign:
        bars(axes[0][0], ["gateway\nHTTP", "Companion\nHTTP", "botocore\nloop", "gateway signer\nloop (limit)"],
             [sign["gateway"]["urls_per_s"], sign["companion"]["urls_per_s"], sign["botocore"]["urls_per_s"],
              sign["signer"]["urls_per_s"]], [ours, peer, peer, limit], "URLs/s (log)",
             "Presigned part URLs per second", log=True)
    rates = results.get("rates")
    for ax, method in ((axes[0][1], "HEAD"), (axes[0][2], "POST")):
        if not rates:
            ax.axis("off")
            continue
        conns = sorted({int(k.split()[1]) for k in rates if k.startswith(method)})
        series = [(label, color, [rates[f"{method} {c} {t}"]["rps"] for c in conns])
                  for t, label, color in (("gateway", "gateway", ours), ("tus", "@tus/server", peer),
                                          ("floor", "floor", limit))]
        grouped(ax, [f"{c} connections" for c in conns], series, "requests/s",
                f"{method} ({'offset' if method == 'HEAD' else 'create'}) requests per second")
    tp = results.get("throughput")
    if tp:
        rows = tp["rows"]
        parallel = sorted({int(n.rsplit("p", 1)[1]) for n in rows if n.startswith(("direct", "raw"))})
        order = [n for p in parallel for n in (f"direct p{p}", f"raw p{p}") if n in rows]
        order += [n for n in ("proxy", "tus-server") if n in rows]
        bars(axes[1][0], [n.replace("tus-server", "@tus/server").replace(" p", "\np") for n in order],
             [rows[n]["mb_per_s"] for n in order],
             [peer if n == "tus-server" else limit if n.startswith("raw") else ours for n in order],
             "MB/s", f"Upload of {tp['size'] / 2**20:,.0f} MiB (grey: raw PUTs, the limit)")
        served = [(n, r) for n, r in rows.items() if r["cpu_s_per_gib"] is not None]
        names = [n.replace("tus-server", "@tus/server").replace(" p", "\np") for n, _ in served]
        cols = [peer if n == "tus-server" else ours for n, _ in served]
        bars(axes[1][1], names, [r["cpu_s_per_gib"] for _, r in served], cols, "CPU seconds per GiB",
             "Server CPU per GiB uploaded", fmt="{:.2f}")
        bars(axes[1][2], names, [r["peak_rss_mib"] for _, r in served], cols, "MiB",
             "Server peak RSS during the upload")
    else:
        for ax in axes[1]:
            ax.axis("off")
    if not sign:
        axes[0][0].axis("off")
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
