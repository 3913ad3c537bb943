// Upload one file with Uppy (@uppy/core) and its tus uploader (@uppy/tus) in Node.
//
//   node uppy_upload.mjs '{"endpoint": "...", "token": "...", "file": "...", "chunkSize": 1048576}'
//
// In Node, @uppy/tus hands `file.data` to tus-js-client's Node build, which accepts a Buffer or a
// Readable (not a Blob), so the file is added as `{name, type, data: Buffer}`.
// `modules`: the directory whose node_modules supply Uppy (default tests/js: Uppy 5; tests/uppy6: Uppy 6).
// Prints one JSON line: {"url", "size", "meta", "progress"}; exits 1 with the error on stderr on failure.
import { readFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { basename, dirname, join } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'

const options = JSON.parse(process.argv[2] ?? '{}')
const resolveFrom = createRequire(join(options.modules ?? dirname(fileURLToPath(import.meta.url)), 'package.json'))
const load = async (name) => (await import(pathToFileURL(resolveFrom.resolve(name)).href)).default
const Uppy = await load('@uppy/core')
const Tus = await load('@uppy/tus')
if (!options.file || !options.endpoint) {
  console.error('usage: node uppy_upload.mjs \'{"endpoint": "...", "token": "...", "file": "..."}\'')
  process.exit(2)
}

function exit(stream, text, code) {
  stream.write(`${text}\n`, () => process.exit(code))
}

const uppy = new Uppy({ autoProceed: false, allowMultipleUploadBatches: false })
uppy.use(Tus, {
  endpoint: options.endpoint,
  headers: options.token ? { Authorization: `Bearer ${options.token}` } : {},
  chunkSize: options.chunkSize ?? Number.POSITIVE_INFINITY,
  retryDelays: options.retryDelays ?? [0, 500],
  limit: 1,
})

let progressEvents = 0
uppy.on('upload-progress', () => {
  progressEvents += 1
})

const data = readFileSync(options.file)
const name = options.name ?? basename(options.file)
const fileId = uppy.addFile({ name, type: 'application/octet-stream', data, source: 'Local', isRemote: false })

try {
  const result = await uppy.upload()
  if (!result || result.failed.length > 0 || result.successful.length !== 1) {
    const errors = (result?.failed ?? []).map((f) => String(f.error))
    exit(process.stderr, `uppy upload failed: ${errors.join('; ') || 'no result'}`, 1)
  } else {
    const file = uppy.getFile(fileId)
    exit(process.stdout, JSON.stringify({
      url: result.successful[0].uploadURL,
      size: data.length,
      meta: file.meta,
      progress: file.progress.bytesUploaded,
      progressEvents,
    }), 0)
  }
} catch (err) {
  exit(process.stderr, `uppy upload failed: ${err?.message ?? err}`, 1)
}
