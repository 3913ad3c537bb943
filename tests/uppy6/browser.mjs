// Uppy 6 (@uppy/core + @uppy/aws-s3 + clients/js uppySignRequest) in Debian's headless Chromium,
// bundled by esbuild: upload with a pause and a resume, close the page (reload) partway, restore the
// upload as @uppy/golden-retriever does (file.s3Multipart), finish it.
//
//   node browser.mjs '{"origin": "http://127.0.0.1:8080", "endpoint": ".../files", "token": "...", "file": "/tmp/x.bin", "stopAfterParts": 2}'
//
// The page is the gateway's /healthz (same origin as the gateway: no CORS on its calls); the part PUTs go
// cross-origin to S3. Prints one JSON line: {first: {s3Multipart, partEvents}, second: {uploadURL, partEvents, putParts}, log}.
import { mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

import { build } from 'esbuild'
import { chromium } from 'playwright-core'

const options = JSON.parse(process.argv[2] ?? '{}')
const here = dirname(fileURLToPath(import.meta.url))
const log = []
const note = (line) => log.push(line)

const bundle = (await build({
  stdin: {
    contents: `import Uppy from '@uppy/core'
import AwsS3 from '@uppy/aws-s3'
import { uppySignRequest } from ${JSON.stringify(join(here, '..', '..', 'clients', 'js', 'index.js'))}
window.UppyUnderTest = { Uppy, AwsS3, uppySignRequest }`,
    resolveDir: here,
  },
  bundle: true,
  write: false,
  format: 'iife',
  logLevel: 'silent',
})).outputFiles[0].text

// In the page: one Uppy, one file from the <input>; resolves when the upload succeeds or `stopAfterParts` is reached.
async function uploadInPage({ endpoint, token, stopAfterParts, pauseAfterParts, restore }) {
  const { Uppy, AwsS3, uppySignRequest } = window.UppyUnderTest
  const uppy = new Uppy({ autoProceed: false })
  uppy.use(AwsS3, { shouldUseMultipart: true, signRequest: uppySignRequest({ endpoint, getToken: async () => token }) })
  const file = document.querySelector('#file').files[0]
  const id = uppy.addFile({ name: file.name, type: file.type || 'application/octet-stream', data: file, source: 'Local' })
  if (restore) uppy.setFileState(id, { s3Multipart: restore })
  const partEvents = []
  return await new Promise((resolve, reject) => {
    uppy.on('s3-multipart:part-uploaded', (f, part) => {
      partEvents.push(part.PartNumber)
      if (partEvents.length === pauseAfterParts) {
        uppy.pauseResume(id)
        setTimeout(() => uppy.pauseResume(id), 300)
      }
      if (partEvents.length === stopAfterParts) resolve({ s3Multipart: uppy.getFile(id).s3Multipart, partEvents })
    })
    uppy.on('upload-error', (f, error) => reject(new Error(`upload-error: ${error.message}`)))
    uppy.upload().then((result) => {
      if (result.successful.length === 1) resolve({ uploadURL: result.successful[0].uploadURL, partEvents })
      else reject(new Error(`upload failed: ${result.failed.map((f) => f.error).join('; ')}`))
    }, reject)
  })
}

const profile = mkdtempSync(join(tmpdir(), 'gateway-chromium-'))
let context
try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath: options.executablePath ?? '/usr/bin/chromium',
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'],
  })
  const page = context.pages()[0] ?? await context.newPage()
  page.on('console', (message) => note(`console.${message.type()}: ${message.text()}`))
  page.on('pageerror', (error) => note(`pageerror: ${error.message}`))
  const putParts = []
  page.on('requestfinished', async (request) => {
    const url = new URL(request.url())
    if (request.method() === 'PUT' && url.searchParams.has('partNumber')) {
      putParts.push({ part: Number(url.searchParams.get('partNumber')), origin: url.origin, status: (await request.response())?.status() })
    }
  })
  const open = async () => {
    await page.goto(`${options.origin}/healthz`)
    await page.addScriptTag({ content: bundle })
    await page.evaluate(() => {
      const input = document.createElement('input')
      input.type = 'file'
      input.id = 'file'
      document.body.append(input)
    })
    await page.setInputFiles('#file', options.file)
  }
  const args = { endpoint: options.endpoint, token: options.token }

  await open()
  const first = await page.evaluate(uploadInPage, { ...args, pauseAfterParts: 1, stopAfterParts: options.stopAfterParts })
  const firstPuts = putParts.splice(0)
  await page.reload() // the tab goes away mid-upload
  await open()
  const second = await page.evaluate(uploadInPage, { ...args, restore: first.s3Multipart })
  await new Promise((resolve) => setTimeout(resolve, 200)) // the last requestfinished events
  process.stdout.write(`${JSON.stringify({ first: { ...first, putParts: firstPuts }, second: { ...second, putParts }, log })}\n`)
} catch (error) {
  process.stderr.write(`${error?.stack ?? error}\n${JSON.stringify({ log })}\n`)
  process.exitCode = 1
} finally {
  await context?.close()
}
