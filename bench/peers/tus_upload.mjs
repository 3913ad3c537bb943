// One upload with tus-js-client (Node build), for the throughput benchmark.
//
//   node tus_upload.mjs '{"endpoint": "...", "token": "...", "file": "...", "chunkSize": 67108864}'
//
// chunkSize "Infinity" (or absent) sends the whole file in one PATCH; retryDelays (ms) defaults to
// [0, 1000, 3000]. Prints one JSON line:
// {"url", "ms", "retries"}; ms is measured from start() to onSuccess, so Node's start-up is not
// counted. On failure the message goes to stderr and the exit code is 1.
import { createReadStream } from 'node:fs'

import { Upload } from 'tus-js-client'

const options = JSON.parse(process.argv[2] ?? '{}')
let chunkSize = Number.POSITIVE_INFINITY
if (options.chunkSize && options.chunkSize !== 'Infinity') chunkSize = Number(options.chunkSize)
let retries = 0
let started = 0

const upload = new Upload(createReadStream(options.file), {
  endpoint: options.endpoint,
  chunkSize,
  retryDelays: options.retryDelays ?? [0, 1000, 3000],
  metadata: { filename: 'bench.bin', filetype: 'application/octet-stream' },
  headers: options.token ? { Authorization: `Bearer ${options.token}` } : {},
  storeFingerprintForResuming: false,
  onShouldRetry(err) {
    retries += 1
    process.stderr.write(`tus: retrying after: ${err.message}\n`)
    return true
  },
  onSuccess() {
    const ms = performance.now() - started
    process.stdout.write(`${JSON.stringify({ url: upload.url, ms, retries })}\n`)
  },
  onError(err) {
    process.stderr.write(`upload failed: ${err.message ?? err}\n`)
    process.exitCode = 1
  },
})
started = performance.now()
upload.start()
