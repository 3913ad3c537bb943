// Upload one file with Uppy 6 (@uppy/core + @uppy/aws-s3) signed by clients/js `uppySignRequest`.
//
//   node uppy6_s3_upload.mjs '{"endpoint": "http://127.0.0.1:8080/files", "token": "...", "file": "/tmp/x.bin"}'
//
// Options (JSON; endpoint and file required):
//   token                  the bearer token `getToken` returns
//   name, type             the file's name and MIME type (default: base name, application/octet-stream)
//   shouldUseMultipart     true, false, or null for the plugin's default (multipart above 100 MiB); default true
//   pauseAfterParts: n     pause once n parts are uploaded, resume after resumeDelayMs (default 300)
//   stopAfterParts: n      exit once n parts are uploaded (a closed tab): prints {stopped, s3Multipart, ...}
//   restore: {uploadId, key}  restore that upload as @uppy/golden-retriever does after a reload
//   removeAfterParts: n    remove the file once n parts are uploaded (Uppy aborts the multipart upload)
//
// Prints one JSON line: {uploadURL, body, s3Multipart, requests, partEvents, progress, signCalls}; `requests` are
// every request Uppy sent ({method, url, status}), `signCalls` the gateway calls uppySignRequest made.
// On failure exits 1; stderr's last line is JSON {uploadErrors, requests}.
import { openAsBlob } from 'node:fs'
import { basename } from 'node:path'

import AwsS3 from '@uppy/aws-s3'
import Uppy from '@uppy/core'

import { uppySignRequest } from '../../clients/js/index.js'
import { installXMLHttpRequest } from '../uppy/node_xhr.mjs'

const options = JSON.parse(process.argv[2] ?? '{}')
if (!options.file || !options.endpoint) {
  console.error('usage: node uppy6_s3_upload.mjs \'{"endpoint": ".../files", "token": "...", "file": "..."}\'')
  process.exit(2)
}

function exit(stream, text, code) {
  stream.write(`${text}\n`, () => process.exit(code))
}

const requests = []
const signCalls = []
installXMLHttpRequest(globalThis.fetch, ({ method, url, size }) => {
  const record = { method, url, size, status: null }
  requests.push(record)
  return record
})
const recordingFetch = async (url, init = {}) => {
  const response = await globalThis.fetch(url, init)
  signCalls.push({ method: init.method ?? 'GET', url: String(url), status: response.status })
  return response
}

const uppy = new Uppy({ autoProceed: false, allowMultipleUploadBatches: false })
const pluginOptions = {
  signRequest: uppySignRequest({ endpoint: options.endpoint, getToken: async () => options.token, fetch: recordingFetch }),
}
if (options.shouldUseMultipart !== null) pluginOptions.shouldUseMultipart = options.shouldUseMultipart ?? true
uppy.use(AwsS3, pluginOptions)

const data = await openAsBlob(options.file)
const fileId = uppy.addFile({
  name: options.name ?? basename(options.file),
  type: options.type ?? 'application/octet-stream',
  data,
  source: 'Local',
  isRemote: false,
})
if (options.restore) uppy.setFileState(fileId, { s3Multipart: options.restore })

const uploadErrors = []
uppy.on('upload-error', (file, error) => {
  const chain = []
  for (let e = error; e != null && chain.length < 5; e = e.cause) {
    chain.push({ name: e.name, message: e.message, status: e.status, body: e.body })
  }
  uploadErrors.push(chain)
})

const partEvents = []
let paused = false
uppy.on('s3-multipart:part-uploaded', (file, part) => {
  partEvents.push(part)
  const count = partEvents.length
  if (options.stopAfterParts === count) {
    exit(process.stdout, JSON.stringify({ stopped: true, s3Multipart: uppy.getFile(fileId).s3Multipart, requests, partEvents, signCalls }), 0)
  }
  if (options.removeAfterParts === count) {
    const s3Multipart = uppy.getFile(fileId).s3Multipart
    uppy.removeFile(fileId)
    // the plugin's abort request is sent without waiting: give it a moment, then report
    setTimeout(() => exit(process.stdout, JSON.stringify({ removed: true, s3Multipart, requests, partEvents, signCalls }), 0), 1000)
  }
  if (options.pauseAfterParts === count && !paused) {
    paused = true
    uppy.pauseResume(fileId)
    setTimeout(() => uppy.pauseResume(fileId), options.resumeDelayMs ?? 300)
  }
})

try {
  const result = await uppy.upload()
  if (options.removeAfterParts) {
    // reported by the timer above
  } else if (!result || result.failed.length > 0 || result.successful.length !== 1) {
    const errors = (result?.failed ?? []).map((f) => `${f.error}`)
    exit(process.stderr, `uppy upload failed: ${errors.join('; ') || 'no result'}\n${JSON.stringify({ uploadErrors, requests, signCalls })}`, 1)
  } else {
    const file = uppy.getFile(fileId)
    const success = result.successful[0]
    exit(process.stdout, JSON.stringify({
      uploadURL: success.uploadURL,
      body: success.response?.body,
      s3Multipart: file.s3Multipart,
      progress: file.progress.bytesUploaded,
      requests,
      partEvents,
      signCalls,
    }), 0)
  }
} catch (err) {
  exit(process.stderr, `uppy upload failed: ${err?.message ?? err}\n${JSON.stringify({ uploadErrors, requests, signCalls })}`, 1)
}
