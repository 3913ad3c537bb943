// Upload one file with Uppy (@uppy/core) and its S3 plugin (@uppy/aws-s3) through the gateway's
// Companion-compatible routes: `endpoint` = the gateway, `headers` = its Authorization header.
//
//   node uppy_s3_upload.mjs '{"endpoint": "http://127.0.0.1:8080", "token": "...", "file": "/tmp/x.bin"}'
//
// Options (JSON, all optional but endpoint and file):
//   token                  Bearer token sent on every request to the endpoint (the plugin's `headers`)
//   name, type             the file's name and MIME type (default: base name, application/octet-stream)
//   meta                   extra Uppy file meta (sent as `metadata` on create)
//   shouldUseMultipart     default true (the plugin's own default is `file.size > 100 MiB`); null: plugin default
//   limit, retryDelays     the plugin's options (defaults 6 and [0, 200, 500])
//   pauseAfterParts: n     pause with uppy.pauseResume() once n parts are uploaded, resume after
//                          resumeDelayMs (default 300): the plugin resumes through listParts
//   stopAfterParts: n      exit once n parts are uploaded, without aborting anything (a closed tab);
//                          prints {"stopped": true, "s3Multipart": {uploadId, key}, ...}
//   restore: {uploadId, key}  restore that upload like @uppy/golden-retriever does after a reload
//                          (file.s3Multipart is set before upload(), so the plugin lists parts first)
//
// Node has no XMLHttpRequest, which the plugin's default `uploadPartBytes` uses for the S3 PUTs; a
// small XHR on top of fetch stands in, so the plugin's own code (ETag from the response headers,
// 403 "Request has expired" handling) runs unchanged.
//
// Prints one JSON line: {uploadURL, body, s3Multipart, requests, puts, partEvents, progress}, where
// `requests` are the calls to the endpoint ({method, path, status, body}) and `puts` the S3 part PUTs
// ({partNumber, status, size}). On failure exits 1: stderr's last line is JSON {uploadErrors, requests,
// puts}, uploadErrors being what 'upload-error' handed the app (each Error's cause chain).
import { openAsBlob } from 'node:fs'
import { basename } from 'node:path'

import AwsS3 from '@uppy/aws-s3'
import Uppy from '@uppy/core'

import { installXMLHttpRequest } from './node_xhr.mjs'

const options = JSON.parse(process.argv[2] ?? '{}')
if (!options.file || !options.endpoint) {
  console.error('usage: node uppy_s3_upload.mjs \'{"endpoint": "...", "token": "...", "file": "..."}\'')
  process.exit(2)
}

function exit(stream, text, code) {
  stream.write(`${text}\n`, () => process.exit(code))
}

const nativeFetch = globalThis.fetch
const endpoint = options.endpoint.replace(/\/$/, '')
const requests = []
const puts = []

// Record every call to the endpoint (the plugin's RequestClient uses the global fetch).
globalThis.fetch = async (input, init = {}) => {
  const url = new URL(typeof input === 'string' ? input : input.url)
  const entry = { method: init.method ?? 'GET', path: url.pathname + url.search, status: null }
  requests.push(entry)
  const response = await nativeFetch(input, init)
  entry.status = response.status
  if (url.href.startsWith(endpoint)) {
    entry.body = await response.clone().json().catch(() => null)
  }
  return response
}

installXMLHttpRequest(nativeFetch, ({ url, size }) => {
  const record = { partNumber: Number(new URL(url).searchParams.get('partNumber')), status: null, size }
  puts.push(record)
  return record
})

const uppy = new Uppy({ autoProceed: false, allowMultipleUploadBatches: false })
const pluginOptions = {
  endpoint,
  headers: options.token ? { Authorization: `Bearer ${options.token}` } : {},
  limit: options.limit ?? 6,
  retryDelays: options.retryDelays ?? [0, 200, 500],
}
if (options.shouldUseMultipart !== null) pluginOptions.shouldUseMultipart = options.shouldUseMultipart ?? true
uppy.use(AwsS3, pluginOptions)

const data = await openAsBlob(options.file)
const name = options.name ?? basename(options.file)
const fileId = uppy.addFile({
  name,
  type: options.type ?? 'application/octet-stream',
  data,
  meta: options.meta ?? {},
  source: 'Local',
  isRemote: false,
})
if (options.restore) {
  uppy.setFileState(fileId, { s3Multipart: options.restore })
}

// What Uppy hands the app on a failure ('upload-error'), with the cause chain of the Error.
const uploadErrors = []
uppy.on('upload-error', (file, error) => {
  const chain = []
  for (let e = error; e != null && chain.length < 5; e = e.cause) {
    chain.push({ name: e.name, message: e.message, statusCode: e.statusCode })
  }
  uploadErrors.push(chain)
})

const partEvents = []
let paused = false
uppy.on('s3-multipart:part-uploaded', (file, part) => {
  partEvents.push(part)
  if (options.stopAfterParts && partEvents.length === options.stopAfterParts) {
    exit(process.stdout, JSON.stringify({
      stopped: true,
      s3Multipart: uppy.getFile(fileId).s3Multipart,
      requests,
      puts,
      partEvents,
    }), 0)
  }
  if (options.pauseAfterParts && partEvents.length === options.pauseAfterParts && !paused) {
    paused = true
    uppy.pauseResume(fileId)
    setTimeout(() => uppy.pauseResume(fileId), options.resumeDelayMs ?? 300)
  }
})

try {
  const result = await uppy.upload()
  if (!result || result.failed.length > 0 || result.successful.length !== 1) {
    const errors = (result?.failed ?? []).map((f) => `${f.error}`)
    const details = JSON.stringify({ uploadErrors, requests, puts })
    exit(process.stderr, `uppy upload failed: ${errors.join('; ') || 'no result'}\n${details}`, 1)
  } else {
    const file = uppy.getFile(fileId)
    const success = result.successful[0]
    exit(process.stdout, JSON.stringify({
      uploadURL: success.uploadURL,
      body: success.response?.body,
      s3Multipart: file.s3Multipart,
      size: data.size,
      progress: file.progress.bytesUploaded,
      requests,
      puts,
      partEvents,
    }), 0)
  }
} catch (err) {
  exit(process.stderr, `uppy upload failed: ${err?.message ?? err}\n${JSON.stringify({ uploadErrors, requests, puts })}`, 1)
}
