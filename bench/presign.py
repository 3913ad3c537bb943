"""Micro-benchmark: presigned upload_part URLs/s, gateway SigV4Signer (in batches of 100, as a sign
request uses it) vs botocore (one at a time: it has no batch call).

Run: python bench/presign.py [n]   (default 20000 URLs each)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # allow `python bench/presign.py` from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import botocore.session
from botocore.config import Config

from gateway.s3.sigv4 import Credentials, SigV4Signer

ENDPOINT, REGION, AK, SK = "http://127.0.0.1:8333", "us-east-1", "AKIDEXAMPLE", "secret/EXAMPLEKEY"
PART = 64 * 1024 * 1024


def bench_presign(n: int = 20_000) -> dict[str, float]:
    """Time n upload_part presigns (with ContentLength) per implementation."""
    client: Any = botocore.session.get_session().create_client(
        "s3", endpoint_url=ENDPOINT, region_name=REGION,
        aws_access_key_id=AK, aws_secret_access_key=SK,
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"},
                      request_checksum_calculation="when_required"),
    )  # fmt: skip
    signer = SigV4Signer(Credentials(AK, SK), REGION, ENDPOINT)
    key, upload_id = "uploads/2024/05/some file \u00e9.bin", "VXBsb2FkSWQ-abc+def/ghi="

    # Warm up both (botocore loads service models lazily on first call).
    client.generate_presigned_url(
        "upload_part",
        Params={"Bucket": "b", "Key": key, "UploadId": upload_id, "PartNumber": 1, "ContentLength": PART},
        ExpiresIn=900,
    )
    signer.presign_url(
        "PUT", "b", key, query={"uploadId": upload_id, "partNumber": "1"},
        signed_headers={"Content-Length": str(PART)}, expires_in=900,
    )  # fmt: skip

    # As the gateway signs: batches of 100 parts of one upload through presign_urls.
    t0 = time.perf_counter()
    for start in range(0, n, 100):
        signer.presign_urls("PUT", "b", key, [
            ({"partNumber": str(i % 10_000 + 1), "uploadId": upload_id}, {"Content-Length": str(PART)})
            for i in range(start, min(n, start + 100))], expires_in=900)
    ours = time.perf_counter() - t0

    t0 = time.perf_counter()
    for i in range(1, n + 1):
        client.generate_presigned_url(
            "upload_part",
            Params={
                "Bucket": "b", "Key": key, "UploadId": upload_id,
                "PartNumber": i % 10_000 + 1, "ContentLength": PART,
            },
            ExpiresIn=900,
        )
    boto = time.perf_counter() - t0

    return {
        "n": n,
        "ours_urls_per_s": n / ours,
        "botocore_urls_per_s": n / boto,
        "ours_us_per_url": ours / n * 1e6,
        "botocore_us_per_url": boto / n * 1e6,
        "speedup": boto / ours,
    }


if __name__ == "__main__":
    r = bench_presign(int(sys.argv[1]) if len(sys.argv) > 1 else 20_000)
    print(f"upload_part presign with ContentLength, n={r['n']}")
    print(f"  ours     : {r['ours_urls_per_s']:>10,.0f} URLs/s  ({r['ours_us_per_url']:.1f} us/URL)")
    print(f"  botocore : {r['botocore_urls_per_s']:>10,.0f} URLs/s  ({r['botocore_us_per_url']:.1f} us/URL)")
    print(f"  speedup  : {r['speedup']:.1f}x")
