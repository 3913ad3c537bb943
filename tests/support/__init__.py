"""Helpers shared by the tests (pytest fixtures stay in tests/conftest.py).

- `tokens`: the test JWT issuer (`token`, `claims`, unsigned and hand-signed tokens) and auth headers;
- `gateway`: `make_settings`, an in-process gateway (`start_gateway`, `running`, `Gateway`), `upload_id`;
- `db`: `upload_row`, the one read of an `uploads` row;
- `storage`: `stored_bytes` and `stored_sha256`, what S3 really holds;
- `direct`: the direct path by hand (sign, PUT to S3, confirm);
- `proxies`: `TcpProxy` (counts, records request heads, cuts connections) and `S3Proxy` (an HTTP relay
  in front of S3 that counts PUTs and injects faults);
- `node`, `js`: running the real JavaScript clients; `processes`: the gateway as a real process;
  `threaded`: a gateway in a background thread, with a synchronous raw HTTP client.
"""

MiB = 1024 * 1024
