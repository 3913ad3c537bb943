// tus-js-client 4 in Node with clients/js's DirectHttpStack: upload one file the direct way.
// Driven by tests/test_direct_adapter.py: argv[2] is JSON options, the last stdout line is a JSON result.
//
// options: endpoint, token, file, chunkSize (null = Infinity), parallel, input ('stream' | 'buffer' |
//          'readable' = a stream of unknown size, 'late-end' = a source that is done only when empty), deferred (Upload-Defer-Length), partSize (the hint sent at
//          creation), checksum ('crc32c' | 'sha256'), abortAtBytes (abort once that many bytes are
//          confirmed, then resume with a new tus.Upload on the same URL), uploadDataDuringCreation
import { createReadStream, readFileSync, statSync } from 'node:fs'
import { basename } from 'node:path'
import { PassThrough } from 'node:stream'
import * as tus from 'tus-js-client'
import { DirectHttpStack } from '../../clients/js/index.js'

const options = JSON.parse(process.argv[2])
const size = statSync(options.file).size
const events = { part: 0, resign: 0, restart: 0, forward: 0, error: 0 }
const errors = []
const stack = new DirectHttpStack({
  parallel: options.parallel ?? 4,
  fallback: new tus.DefaultHttpStack(),
  checksum: options.checksum ?? undefined,
  partSize: options.partSize ?? undefined,
  onEvent: (type, detail) => {
    events[type] = (events[type] ?? 0) + 1
    if (process.env.ADAPTER_DEBUG) console.error('event', type, JSON.stringify(detail))
    if (type === 'error') errors.push(detail.message)
  },
})

// 'late-end': a source that, like a browser ReadableStream, only learns it is done when a read comes
// back empty, so tus-js-client declares the deferred length in a final PATCH without a body.
const lateEndReader = {
  openFile(data) {
    return Promise.resolve({
      size: null,
      slice(start, end) {
        const value = data.subarray(start, Math.min(end, data.length))
        value.size = value.length
        return Promise.resolve({ value, done: value.length === 0 })
      },
      close() {},
    })
  },
}

function input() {
  if (options.input === 'late-end') return readFileSync(options.file)
  if (options.input === 'buffer') return readFileSync(options.file)
  // 'readable': a stream of unknown size (tus-js-client's StreamSource), not a file stream
  if (options.input === 'readable') return createReadStream(options.file).pipe(new PassThrough())
  return createReadStream(options.file)
}

function uploadOptions(extra) {
  return {
    endpoint: options.endpoint,
    chunkSize: options.chunkSize ?? Number.POSITIVE_INFINITY,
    retryDelays: [0, 500, 1000],
    metadata: { filename: basename(options.file), filetype: 'application/octet-stream' },
    uploadLengthDeferred: Boolean(options.deferred),
    uploadDataDuringCreation: Boolean(options.uploadDataDuringCreation),
    httpStack: stack,
    ...(options.input === 'late-end' ? { fileReader: lateEndReader } : {}),
    onBeforeRequest: (req) => {
      if (process.env.ADAPTER_DEBUG) console.error('request', req.getMethod(), req.getURL(), req.getHeader('Upload-Offset') ?? '', req.getHeader('Upload-Length') ?? '')
      req.setHeader('Authorization', `Bearer ${options.token}`)
    },
    ...extra,
  }
}

function run(extra, onUpload = () => {}) {
  return new Promise((resolve, reject) => {
    let upload
    const opts = uploadOptions({
      ...extra,
      onError: reject,
      onSuccess: () => resolve(upload),
    })
    upload = new tus.Upload(input(), opts)
    onUpload(upload, resolve)
    upload.start()
  })
}

let finished = false
process.on('beforeExit', () => {
  if (!finished) {
    console.error(`tus-js-client never finished (the event loop drained); events: ${JSON.stringify(events)}`)
    process.exitCode = 2
  }
})

const started = Date.now()
let progressMax = 0
let progressCalls = 0
let resumedFrom = null
let url
if (options.abortAtBytes) {
  // First attempt: abort once enough is confirmed, as a closed tab or a pause would.
  const first = await run({}, (upload, resolve) => {
    upload.options.onProgress = (sent) => {
      progressCalls++
      progressMax = Math.max(progressMax, sent)
      if (sent >= options.abortAtBytes && !upload._abortedByTest) {
        upload._abortedByTest = true
        upload.abort().then(() => resolve(upload))
      }
    }
  })
  url = first.url
  const second = await run({
    uploadUrl: url,
    onProgress: (sent) => { progressCalls++ },
    onAfterResponse: (req, res) => {
      if (req.getMethod() === 'HEAD' && resumedFrom === null) resumedFrom = Number(res.getHeader('Upload-Offset'))
    },
  })
  url = second.url
} else {
  const upload = await run({
    onProgress: (sent) => {
      progressCalls++
      progressMax = Math.max(progressMax, sent)
    },
  })
  url = upload.url
}

finished = true
console.log(JSON.stringify({
  url, size, events, errors, resumedFrom, progressMax, progressCalls, seconds: (Date.now() - started) / 1000,
}))
