/**
 * `uppySignRequest`: the `signRequest` of Uppy 6's `@uppy/aws-s3` for tus-s3-gateway.
 *
 *   import AwsS3 from '@uppy/aws-s3'
 *   import { uppySignRequest } from '@tus-s3-gateway/direct-stack'
 *   uppy.use(AwsS3, { signRequest: uppySignRequest({ endpoint: 'https://gw.example/files', getToken }) })
 *
 * Uppy sends each S3 request itself to the URL returned here. UploadPart gets a presigned S3 URL (the
 * bytes go straight to S3, nothing else is sent there); the control-plane requests (create, list,
 * complete, abort, and a small file's single PUT) go to the gateway's S3-shaped routes with the
 * bearer token as a header, so the gateway's auth, quotas and exactly-once completion hold. Part URLs
 * are signed ahead in batches (Uppy asks for one part at a time). No imports, no build step.
 */

const SIGN_AHEAD = 16
const URL_MARGIN_MS = 60_000 // a cached part URL expiring sooner than this is signed again

/**
 * @param {{ endpoint: string, getToken: () => string | Promise<string>, signAhead?: number, fetch?: typeof fetch }} options
 * @returns {(request: { method: string, key: string, uploadId?: string, partNumber?: number, contentType?: string }) => Promise<{ url: string, headers?: Record<string, string> }>}
 */
export function uppySignRequest({ endpoint, getToken, signAhead = SIGN_AHEAD, fetch: fetchFn } = {}) {
  if (typeof endpoint !== 'string' || !endpoint) throw new TypeError('endpoint (the gateway\'s /files URL) is required')
  if (typeof getToken !== 'function') throw new TypeError('getToken must be a function returning the bearer token')
  const base = endpoint.replace(/\/+$/, '')
  const send = fetchFn ?? ((...args) => globalThis.fetch(...args))
  const urls = new Map() // uploadId -> Map(partNumber -> { url, until })

  async function authorization() {
    return { Authorization: `Bearer ${await getToken()}` }
  }

  async function gateway(url, init) {
    const response = await send(url, init)
    if (!response.ok) {
      const body = await response.json().catch(() => ({}))
      const error = new Error(`gateway answered ${response.status}${body.error ? ` ${body.error}: ${body.message}` : ''}`)
      error.status = response.status
      error.body = body
      throw error
    }
    return response
  }

  async function partUrl(uploadId, partNumber) {
    const known = urls.get(uploadId)?.get(partNumber)
    if (known && known.until - Date.now() > URL_MARGIN_MS) return known.url
    const parts = Array.from({ length: signAhead }, (_, i) => partNumber + i).filter((n) => n <= 10_000)
    const response = await gateway(`${base}/${encodeURIComponent(uploadId)}/s3/urls`, {
      method: 'POST',
      headers: { ...(await authorization()), 'Content-Type': 'application/json' },
      body: JSON.stringify({ parts }),
    })
    const { expires_in: expiresIn, urls: signed } = await response.json()
    const until = Date.now() + expiresIn * 1000
    const cache = new Map()
    for (const [number, url] of Object.entries(signed)) cache.set(Number(number), { url, until })
    urls.set(uploadId, cache) // only the newest batch: a file's parts go one after another
    return cache.get(partNumber).url
  }

  /** A small file's single PUT: the gateway creates its upload first, the PUT carries the file. */
  async function putObjectUrl(key, contentType) {
    const response = await gateway(`${base}/s3?uploads&key=${encodeURIComponent(key)}`, {
      method: 'POST',
      headers: { ...(await authorization()), ...(contentType ? { 'Content-Type': contentType } : {}) },
    })
    const uploadId = /<UploadId>([^<]+)<\/UploadId>/.exec(await response.text())?.[1]
    if (!uploadId) throw new Error('the gateway did not answer an upload id')
    return `${base}/${uploadId}`
  }

  return async function signRequest(request) {
    const { method, key, uploadId, partNumber } = request
    if (uploadId == null) {
      if (method === 'POST') return { url: `${base}/s3?uploads&key=${encodeURIComponent(key)}`, headers: await authorization() }
      if (method === 'PUT') return { url: await putObjectUrl(key, request.contentType), headers: await authorization() }
      throw new TypeError(`tus-s3-gateway does not sign ${method} of an object; objects are deleted with DELETE {upload}`)
    }
    if (method === 'PUT') {
      if (!Number.isInteger(partNumber)) throw new TypeError('an UploadPart request needs a partNumber')
      return { url: await partUrl(uploadId, partNumber) }
    }
    if (method === 'DELETE') urls.delete(uploadId)
    return { url: `${base}/${encodeURIComponent(uploadId)}/s3`, headers: await authorization() }
  }
}

export default uppySignRequest
