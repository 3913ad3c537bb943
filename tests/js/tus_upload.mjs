// Upload one file with the real tus-js-client (Node build), driven by tests/test_js_clients.py.
//
//   node tus_upload.mjs '<json options>'
//
// Options (JSON object in argv[2]):
//   endpoint      tus collection URL (required unless uploadUrl is given)
//   token         bearer token, sent as `Authorization: Bearer <token>` on every request
//   file          path of the file to upload (required)
//   source        "file" (fs.ReadStream, default), "buffer" (Buffer in memory) or
//                 "stream" (a generic Readable that is not an fs.ReadStream: needs a finite chunkSize) or
//                 "reader" (a custom fileReader with positional reads and no size: needs a finite chunkSize)
//   chunkSize, uploadDataDuringCreation, uploadLengthDeferred, retryDelays, metadata,
//   uploadUrl, removeFingerprintOnSuccess, overridePatchMethod: passed to tus.Upload as they are
//   urlStorage    path of a JSON file: use tus-js-client's FileUrlStorage there (fingerprints persist)
//   resume        true: findPreviousUploads() and resumeFromPreviousUpload(the first one) before start()
//   abortAfterChunks  N: call upload.abort() after the Nth accepted chunk and report (exit 0)
//   terminate     with abortAfterChunks: upload.abort(true), i.e. DELETE the upload (termination)
//
// Prints one JSON line on stdout. On success:
//   {"url", "bytesUploaded", "sentThisRun", "startOffset", "resumed", "previousUploads",
//    "chunks", "requests", "retries"}
// `requests` lists every request tus-js-client made: method, url, the tus headers it set and the
// response status / Upload-Offset. On failure the error message goes to stderr and the exit code is 1.
import { createReadStream, readFileSync } from 'node:fs'
import { open } from 'node:fs/promises'
import { PassThrough } from 'node:stream'

import { FileUrlStorage, Upload } from 'tus-js-client'

const options = JSON.parse(process.argv[2] ?? '{}')
if (!options.file) {
  console.error('usage: node tus_upload.mjs \'{"endpoint": "...", "token": "...", "file": "..."}\'')
  process.exit(2)
}

function openSource(kind, path) {
  if (kind === 'buffer') return readFileSync(path)
  if (kind === 'stream') return createReadStream(path).pipe(new PassThrough())
  if (kind === 'reader') return path
  return createReadStream(path)
}

// source "reader": a custom `fileReader` whose source has no size and reads the file positionally,
// reporting done when a read comes back short. With uploadLengthDeferred and a size that is a
// multiple of chunkSize the last PATCH is then empty and carries Upload-Length (tus-js-client's own
// StreamSource stalls in that case: tus/tus-js-client#779).
class PositionalSource {
  constructor(handle) {
    this._handle = handle
    this.size = null
  }

  async slice(start, end) {
    const length = end - start
    const buffer = Buffer.alloc(length)
    const { bytesRead } = await this._handle.read(buffer, 0, length, start)
    const value = buffer.subarray(0, bytesRead)
    value.size = bytesRead
    return { value, done: bytesRead < length }
  }

  close() {
    this._handle.close()
  }
}

const positionalReader = {
  async openFile(path, chunkSize) {
    if (!Number.isFinite(Number(chunkSize))) throw new Error('source "reader" needs a finite chunkSize')
    return new PositionalSource(await open(path, 'r'))
  },
}

const PASSED = [
  'endpoint', 'uploadUrl', 'chunkSize', 'uploadDataDuringCreation', 'uploadLengthDeferred', 'retryDelays',
  'metadata', 'removeFingerprintOnSuccess', 'overridePatchMethod', 'uploadSize', 'storeFingerprintForResuming',
  'parallelUploads', 'protocol',
]
const TRACED = [
  'Upload-Offset', 'Upload-Length', 'Upload-Defer-Length', 'Upload-Metadata', 'Content-Type', 'Tus-Resumable',
  'X-HTTP-Method-Override', 'Upload-Concat', 'Upload-Draft-Interop-Version', 'Upload-Complete',
]

const requests = []
const chunks = []
let startOffset = null
let retries = 0
let finished = false

// No process.exit(): Node exits once tus-js-client is idle, so work it does not await is done too
// (abort(true) resolves before the URL storage entry is removed, for one).
function report(result) {
  if (finished) return
  finished = true
  process.stdout.write(`${JSON.stringify(result)}\n`)
}

function fail(message) {
  if (finished) return
  finished = true
  process.exitCode = 1
  process.stderr.write(`${message}\n`)
}

const tusOptions = {}
for (const name of PASSED) {
  if (options[name] !== undefined && options[name] !== null) tusOptions[name] = options[name]
}
// JSON has no Infinity; "Infinity" or null means tus-js-client's default (one PATCH for everything).
if (tusOptions.chunkSize === 'Infinity') tusOptions.chunkSize = Number.POSITIVE_INFINITY
if (options.urlStorage) tusOptions.urlStorage = new FileUrlStorage(options.urlStorage)
if (options.source === 'reader') tusOptions.fileReader = positionalReader

const upload = new Upload(openSource(options.source, options.file), {
  ...tusOptions,
  headers: options.token ? { Authorization: `Bearer ${options.token}` } : {},
  onBeforeRequest(req) {
    const headers = {}
    for (const name of TRACED) {
      const value = req.getHeader(name)
      if (value !== undefined) headers[name] = String(value)
    }
    requests.push({ method: req.getMethod(), url: req.getURL(), headers })
  },
  onAfterResponse(req, res) {
    const entry = requests.findLast((r) => r.method === req.getMethod() && r.status === undefined)
    if (entry) {
      entry.status = res.getStatus()
      entry.offset = res.getHeader('Upload-Offset') ?? null
    }
    // Where this run started: 0 for a new upload, the HEAD's offset for a resumed one.
    if (startOffset === null && req.getMethod() === 'POST') startOffset = 0
    if (startOffset === null && req.getMethod() === 'HEAD') {
      startOffset = Number.parseInt(res.getHeader('Upload-Offset') ?? '0', 10)
    }
  },
  // tus-js-client's default decision (retry unless a 4xx other than 409/423), counted and logged.
  onShouldRetry(err, retryAttempt) {
    const status = err.originalResponse ? err.originalResponse.getStatus() : 0
    const retry = status < 400 || status >= 500 || status === 409 || status === 423
    if (retry) {
      retries += 1
      console.error(`tus: retry #${retryAttempt + 1} after: ${err.message}`)
    }
    return retry
  },
  onChunkComplete(chunkSize, bytesAccepted, bytesTotal) {
    chunks.push({ chunkSize, bytesAccepted, bytesTotal })
    if (options.abortAfterChunks && chunks.length >= options.abortAfterChunks) {
      upload
        .abort(Boolean(options.terminate))
        .then(() => report(summary({ aborted: true, terminated: Boolean(options.terminate) })))
        .catch((err) => fail(`abort failed: ${err.message ?? err}`))
    }
  },
  onSuccess() {
    report(summary({ aborted: false }))
  },
  onError(err) {
    fail(`upload failed: ${err.message ?? err}`)
  },
})

// tus-js-client keeps no timer or socket while it waits on a stalled source: Node would just exit 0.
process.on('beforeExit', () => {
  const { url, bytesUploaded } = summary({})
  fail(`upload stalled: Node's event loop drained before onSuccess/onError (url ${url}, offset ${bytesUploaded})`)
})

let previousUploads = 0
function summary(extra) {
  const accepted = chunks.reduce((sum, c) => sum + c.chunkSize, 0)
  const last = chunks.length ? chunks[chunks.length - 1].bytesAccepted : startOffset
  return {
    url: upload.url,
    bytesUploaded: last,
    sentThisRun: accepted,
    startOffset,
    resumed: previousUploads > 0 || Boolean(options.uploadUrl),
    previousUploads,
    chunks,
    requests,
    retries,
    ...extra,
  }
}

try {
  if (options.resume) {
    const previous = await upload.findPreviousUploads()
    previousUploads = previous.length
    if (previous.length > 0) upload.resumeFromPreviousUpload(previous[0])
  }
  upload.start()
} catch (err) {
  fail(`upload failed: ${err.message ?? err}`)
}
