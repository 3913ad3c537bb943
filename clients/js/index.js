/**
 * @tus-s3-gateway/direct-stack: a tus-js-client v4 `httpStack` that sends the bytes of every PATCH
 * straight to S3 through the gateway's `presigned-parts` extension.
 *
 *   import { DirectHttpStack } from '@tus-s3-gateway/direct-stack'
 *   const upload = new tus.Upload(file, { endpoint, headers, httpStack: new DirectHttpStack({ parallel: 4 }) })
 *
 * Creation (POST), HEAD and DELETE go to the gateway unchanged through the fallback stack
 * (`tus.DefaultHttpStack`); the stack only reads their answers to learn each upload's part size and
 * length. A PATCH becomes: sign its parts (`POST {upload}/parts`), PUT each part to its presigned URL,
 * confirm them in batches (`PUT {upload}/parts`, beside the next PUTs), and answer tus-js-client with a synthetic 204 whose
 * `Upload-Offset` is the offset the gateway confirmed plus the bytes this stack holds for a part that is
 * not whole yet (only when tus-js-client's chunkSize is not a multiple of the part size). The gateway
 * never sees a byte of the file.
 *
 * No build step and no imports: an ES module for browsers (XHR for the S3 PUTs, for upload progress)
 * and Node 18+ (global fetch).
 */

const DEFAULT_PARALLEL = 4
const URL_MARGIN_MS = 30_000 // re-sign a URL that expires sooner than this
const MAX_THROTTLE_RETRIES = 3
// Parts whose PUTs finish within this share one confirm (`PUT {upload}/parts`): the gateway's cost is
// per request, and S3 holds the parts meanwhile (a HEAD after a drop finds them).
const CONFIRM_LINGER_MS = 1000
const OCTET_STREAM = 'application/offset+octet-stream'

/** A tus-js-client v4 HttpStack for the gateway's direct (presigned-parts) path. */
export class DirectHttpStack {
  /**
   * @param {object} [options]
   * @param {number} [options.parallel=4] part PUTs in flight at once (per PATCH)
   * @param {object} [options.fallback] the stack for gateway requests; default `new tus.DefaultHttpStack()`
   *   from the global `tus` (the browser build); pass it explicitly with bundlers and in Node
   * @param {number} [options.signBatch] parts per sign request (default the larger of 16 and 2 x parallel)
   * @param {'crc32c'|'sha256'} [options.checksum] ask for per-part checksums at creation
   *   (`Upload-Part-Checksum`); S3 then verifies every part
   * @param {number} [options.partSize] part size hint sent at creation (`Upload-Part-Size`)
   * @param {'xhr'|'fetch'} [options.transport] how parts are PUT to S3 (default: xhr where it exists)
   * @param {typeof fetch} [options.fetch] fetch for gateway calls (and S3 PUTs with transport 'fetch')
   * @param {RequestCredentials} [options.credentials] fetch credentials for gateway calls
   * @param {(type: string, detail: object) => void} [options.onEvent] observe parts, re-signs, restarts
   */
  constructor(options = {}) {
    this.parallel = Math.max(1, Math.floor(options.parallel ?? DEFAULT_PARALLEL))
    // At least 16 URLs per sign request (the gateway's cost is per request); stale ones are signed again.
    this.signBatch = Math.max(1, Math.floor(options.signBatch ?? Math.max(16, 2 * this.parallel)))
    this.checksum = options.checksum ?? null
    if (this.checksum !== null && !(this.checksum in CHECKSUMS)) {
      throw new TypeError(`DirectHttpStack: checksum must be one of ${Object.keys(CHECKSUMS).join(', ')}`)
    }
    this.partSize = options.partSize ?? null
    this.transport = options.transport ?? (typeof XMLHttpRequest === 'function' ? 'xhr' : 'fetch')
    this.credentials = options.credentials
    this.onEvent = options.onEvent ?? null
    const fetchImpl = options.fetch ?? globalThis.fetch
    if (typeof fetchImpl !== 'function') throw new TypeError('DirectHttpStack: no fetch in this environment')
    this._fetch = (url, init) => fetchImpl(url, init)
    this._fallback = options.fallback ?? defaultFallback()
    /** upload URL -> UploadState */
    this._uploads = new Map()
  }

  createRequest(method, url) {
    return new DirectRequest(this, method, url)
  }

  getName() {
    return 'DirectHttpStack'
  }

  _emit(type, detail) {
    if (this.onEvent) {
      try {
        this.onEvent(type, detail)
      } catch {
        // an observer's bug must not break the upload
      }
    }
  }

  _state(url) {
    const key = normalizeUrl(url)
    let state = this._uploads.get(key)
    if (!state) {
      state = new UploadState(key)
      this._uploads.set(key, state)
    }
    return state
  }

  /** What a POST/HEAD/DELETE answer says about an upload. */
  _observe(method, url, req, res) {
    const status = res.getStatus()
    if (status < 200 || status >= 300) return
    if (method === 'DELETE') {
      this._uploads.delete(normalizeUrl(url))
      return
    }
    let uploadUrl = url
    if (method === 'POST') {
      const location = res.getHeader('Location')
      if (!location) return
      uploadUrl = new URL(location, absoluteUrl(url)).href
    }
    const state = this._state(uploadUrl)
    state.learn(res, method === 'POST' ? req : null)
  }
}

function defaultFallback() {
  const tus = globalThis.tus
  if (tus && typeof tus.DefaultHttpStack === 'function') return new tus.DefaultHttpStack()
  throw new TypeError('DirectHttpStack: pass { fallback: new tus.DefaultHttpStack() } '
    + '(tus-js-client is not loaded as the global `tus` here)')
}

/** What the stack knows about one upload, keyed by its URL. */
class UploadState {
  constructor(url) {
    this.url = url
    this.partSize = null
    this.length = null // known length
    this.pendingLength = null // a deferred length tus-js-client declared, not yet told to the gateway
    this.checksum = null
    // Bytes of a part that is not whole yet, from `start` (a part boundary the gateway confirmed).
    // The next PATCH should carry offset start + size; `valid` is false while a PATCH runs or after one
    // failed, and then the next PATCH's offset (the server's, after a HEAD) is taken as is.
    this.buffer = { start: 0, pieces: [], size: 0 }
    this.valid = false
    this.urls = new Map() // part number -> { url, headers, length, expiresAtMs }
    this.generation = 0 // bumped by every PATCH; a stale run must not touch the state
    this.signing = Promise.resolve()
  }

  learn(res, creationRequest) {
    const partSize = toInt(res.getHeader('Upload-Part-Size'))
    if (partSize !== null && partSize > 0) this.partSize = partSize
    const length = toInt(res.getHeader('Upload-Length'))
      ?? (creationRequest ? toInt(creationRequest.getHeader('Upload-Length')) : null)
    if (length !== null) {
      this.length = length
      this.pendingLength = null
    }
    const checksum = res.getHeader('Upload-Part-Checksum')
      ?? (creationRequest ? creationRequest.getHeader('Upload-Part-Checksum') : null)
    if (checksum) this.checksum = checksum.trim().toLowerCase()
    const offset = toInt(res.getHeader('Upload-Offset'))
    if (!this.valid && offset !== null) this.resetAt(offset)
  }

  get expected() {
    return this.valid ? this.buffer.start + this.buffer.size : null
  }

  resetAt(offset) {
    this.buffer = { start: offset, pieces: [], size: 0 }
    this.valid = true
  }
}

/** The request tus-js-client holds: PATCH goes direct, the rest through the fallback stack. */
class DirectRequest {
  constructor(stack, method, url) {
    this._stack = stack
    this._method = method
    this._url = url
    this._headers = {}
    this._progress = () => {}
    // Created at once so onBeforeRequest can reach the underlying object (xhr.withCredentials...).
    this._inner = stack._fallback.createRequest(method, url)
    this._controller = new AbortController()
  }

  getMethod() {
    return this._method
  }

  getURL() {
    return this._url
  }

  setHeader(name, value) {
    this._headers[name] = value
    this._inner.setHeader(name, value)
  }

  getHeader(name) {
    return headerOf(this._headers, name)
  }

  setProgressHandler(handler) {
    this._progress = handler
    this._inner.setProgressHandler(handler)
  }

  getUnderlyingObject() {
    return this._inner.getUnderlyingObject()
  }

  abort() {
    this._controller.abort()
    return Promise.resolve(this._inner.abort()).catch(() => {})
  }

  async send(body = null) {
    const override = (this.getHeader('X-HTTP-Method-Override') || '').toUpperCase()
    const method = this._method === 'POST' && override ? override : this._method
    if (method === 'PATCH') return this._sendPatch(body)
    if (method === 'POST' && this._method === 'POST') {
      this._creationHints()
      if (bodySize(body) > 0 && /^application\/offset\+octet-stream/i.test(this.getHeader('Content-Type') || '')) {
        return this._sendCreationWithUpload(body)
      }
    }
    const res = await this._inner.send(body)
    this._stack._observe(method, this._url, this, res)
    return res
  }

  _creationHints() {
    const stack = this._stack
    if (stack.partSize && !this.getHeader('Upload-Part-Size')) this.setHeader('Upload-Part-Size', String(stack.partSize))
    if (stack.checksum && !this.getHeader('Upload-Part-Checksum')) this.setHeader('Upload-Part-Checksum', stack.checksum)
  }

  /** creation-with-upload: create without the body, then send the body the direct way. */
  async _sendCreationWithUpload(body) {
    const stack = this._stack
    const create = stack._fallback.createRequest('POST', this._url)
    for (const [name, value] of Object.entries(this._headers)) {
      if (name.toLowerCase() !== 'content-type') create.setHeader(name, value)
    }
    copyCredentials(this._inner.getUnderlyingObject(), create.getUnderlyingObject())
    const res = await abortable(create, create.send(null), this._controller.signal)
    stack._observe('POST', this._url, this, res)
    const location = res.getHeader('Location')
    if (res.getStatus() < 200 || res.getStatus() >= 300 || !location) return res
    const state = stack._state(new URL(location, absoluteUrl(this._url)).href)
    const run = new PatchRun(this, state, 0, body, null)
    let offset
    try {
      offset = await run.execute()
    } catch (err) {
      if (this._controller.signal.aborted) throw abortError()
      // The upload exists: answer what the gateway confirmed, as it does when creation-with-upload fails.
      stack._emit('error', { message: String(err && err.message) })
      offset = Math.max(0, ...run.confirmedOffsets)
      state.resetAt(offset)
    }
    return new SyntheticResponse(res.getStatus(), { 'Upload-Offset': String(offset) }, res.getBody(),
      { base: res, underlying: res.getUnderlyingObject() })
  }

  async _sendPatch(body) {
    const stack = this._stack
    const signal = this._controller.signal
    try {
      let state = stack._uploads.get(normalizeUrl(this._url))
      if (!state || !state.partSize) state = await this._learn()
      const offset = toInt(this.getHeader('Upload-Offset'))
      if (offset === null) return synthetic(400, 'invalid_offset', 'the PATCH has no Upload-Offset')
      const declared = toInt(this.getHeader('Upload-Length'))
      const result = await new PatchRun(this, state, offset, body, declared).execute()
      if (typeof result === 'object') return result // the gateway's own answer to a forwarded PATCH
      return new SyntheticResponse(204, { 'Upload-Offset': String(result) }, '')
    } catch (err) {
      if (signal.aborted) throw abortError()
      if (err instanceof GatewayError) {
        stack._emit('error', { status: err.status, message: err.message })
        // tus-js-client retries (after a HEAD) on 409, 423 and 5xx; other 4xx are fatal.
        return new SyntheticResponse(err.status, err.headers, err.body)
      }
      if (err instanceof S3Error) {
        stack._emit('error', { status: err.status, part: err.part, message: err.message })
        return new SyntheticResponse(502, { 'Content-Type': 'application/json' }, JSON.stringify({
          error: { code: 's3_error', message: err.message, s3_status: err.status, part: err.part },
        }))
      }
      if (err instanceof AdapterError) return synthetic(400, 'adapter_error', err.message)
      throw err // network errors: tus-js-client retries them
    }
  }

  /** No POST or HEAD went through this stack for the upload (a URL from elsewhere): ask the gateway. */
  async _learn() {
    const res = await this._gateway('HEAD', this._url, { 'Tus-Resumable': '1.0.0' })
    const state = this._stack._state(this._url)
    state.learn(res, null)
    if (!state.partSize) {
      throw new AdapterError('the gateway did not say this upload\'s Upload-Part-Size: it does not offer presigned-parts')
    }
    return state
  }

  /** A request to the gateway with this request's credentials; non-2xx throws GatewayError. */
  async _gateway(method, url, headers = {}, json = undefined) {
    const all = { ...headers }
    for (const name of ['Authorization', 'X-Request-ID']) {
      const value = this.getHeader(name)
      if (value !== undefined && value !== null) all[name] = value
    }
    let body
    if (json !== undefined) {
      all['Content-Type'] = 'application/json'
      body = JSON.stringify(json)
    }
    const credentials = this._stack.credentials
      ?? (this._inner.getUnderlyingObject()?.withCredentials === true ? 'include' : undefined)
    for (let attempt = 0; ; attempt++) {
      const init = { method, headers: all, body, signal: this._controller.signal, cache: 'no-store' }
      if (credentials) init.credentials = credentials
      const res = await this._stack._fetch(url, init)
      const text = method === 'HEAD' ? '' : await res.text()
      if (res.status === 429 && attempt < MAX_THROTTLE_RETRIES) {
        await sleep(Math.min(30, toInt(res.headers.get('Retry-After')) ?? 1) * 1000, this._controller.signal)
        continue
      }
      if (res.status < 200 || res.status >= 300) throw GatewayError.from(method, url, res, text)
      return new FetchResponse(res, text)
    }
  }
}

/**
 * A run's confirms in batches: each part waits at most CONFIRM_LINGER_MS (or until `flush`) for others
 * to share its request, and one confirm is on its way at a time, in order, so every answer's offset
 * covers the batches before it.
 */
class Confirmer {
  constructor(send) {
    this.send = send // (numbers) => Promise<offset>
    this.waiting = []
    this.timer = null
    this.last = Promise.resolve()
  }

  add(number) {
    return new Promise((resolve, reject) => {
      this.waiting.push({ number, resolve, reject })
      if (this.timer === null) this.timer = setTimeout(() => this.flush(), CONFIRM_LINGER_MS)
    })
  }

  flush() {
    if (this.timer !== null) {
      clearTimeout(this.timer)
      this.timer = null
    }
    if (this.waiting.length === 0) return
    const batch = this.waiting.splice(0)
    const numbers = batch.map((item) => item.number).sort((a, b) => a - b)
    this.last = this.last.then(() => this.send(numbers)).then(
      (offset) => { for (const item of batch) item.resolve(offset) },
      (err) => { for (const item of batch) item.reject(err) },
    )
  }
}

/** One PATCH: from its offset and body to the offset to report. */
class PatchRun {
  constructor(req, state, offset, body, declaredLength) {
    this.req = req
    this.stack = req._stack
    this.state = state
    this.offset = offset
    this.body = body
    this.declared = declaredLength
    this.controller = new AbortController()
    this.signal = this.controller.signal
    const outer = req._controller.signal
    if (outer.aborted) this.controller.abort()
    else outer.addEventListener('abort', () => this.controller.abort(), { once: true })
    this.sent = new Map() // part number -> bytes sent
    this.confirmedOffsets = []
    this.confirmer = new Confirmer((numbers) => this.confirmBatch(numbers))
    this.upcoming = [] // part numbers of this run, for sign batches
  }

  check() {
    if (this.signal.aborted) throw abortError()
    if (this.generation !== this.state.generation) throw abortError()
  }

  /** Returns the offset to report, or a gateway response when the PATCH was forwarded. */
  async execute() {
    const { state, offset } = this
    this.generation = ++state.generation
    const size = bodySize(this.body)
    if (this.declared !== null && state.length === null) state.pendingLength = this.declared
    if (offset !== state.expected) {
      // After a HEAD (retry, resume, reload) tus-js-client PATCHes from the server's offset: start there.
      this.stack._emit('restart', { url: state.url, offset, expected: state.expected })
      state.resetAt(offset)
    }
    const partSize = state.partSize
    const length = state.length ?? state.pendingLength
    const start = state.buffer.start
    if (start % partSize !== 0 && start !== length) {
      // Mid-part (bytes a proxy-path PATCH left stashed): finish that part through the gateway.
      return this.forward(Math.min(size, partSize - (start % partSize)))
    }
    const end = offset + size
    const plan = []
    for (let at = start; ;) {
      const partLength = length === null ? partSize : Math.min(partSize, length - at)
      if (partLength <= 0 || at + partLength > end) break
      plan.push({ number: at / partSize + 1, offset: at, length: partLength })
      at += partLength
    }
    const reader = new BodyReader(this.body, size)
    try {
      if (plan.length === 0) {
        if (state.pendingLength !== null && size === 0 && state.buffer.size === 0 && end === state.pendingLength) {
          // A deferred length that ends on a part boundary: only the gateway can take the declaration.
          return this.forward(0)
        }
        if (size > 0) this.keep(await reader.take(size), size)
        this.check()
        return end
      }
      this.upcoming = plan.map((part) => part.number)
      const planEnd = plan[plan.length - 1].offset + plan[plan.length - 1].length
      this.base = start
      state.valid = false // until this run succeeds
      await this.uploadAll(plan, reader)
      const tail = end - planEnd
      const leftover = tail > 0 ? await reader.take(tail) : null
      this.check()
      const confirmed = Math.max(...this.confirmedOffsets)
      if (state.length !== null && confirmed >= state.length) {
        state.resetAt(state.length)
        this.stack._uploads.delete(state.url) // complete: nothing more to remember
        return state.length
      }
      if (confirmed !== planEnd) {
        // The gateway's offset is the truth (a hole before these parts, or parts confirmed past them).
        state.resetAt(confirmed)
        return confirmed
      }
      state.resetAt(planEnd)
      if (leftover) this.keep(leftover, tail)
      return end
    } finally {
      reader.close()
    }
  }

  keep(piece, size) {
    this.check()
    this.state.buffer.pieces.push(piece)
    this.state.buffer.size += size
  }

  /** Send (part of) this PATCH to the gateway itself, as a stock tus client would. */
  async forward(count) {
    const reader = new BodyReader(this.body, bodySize(this.body))
    const chunk = count > 0 ? await reader.take(count) : null
    reader.close()
    const inner = this.req._inner
    this.stack._emit('forward', { url: this.state.url, offset: this.offset, bytes: count })
    const res = await abortable(inner, inner.send(chunk), this.signal)
    const offset = toInt(res.getHeader('Upload-Offset'))
    if (res.getStatus() >= 200 && res.getStatus() < 300 && offset !== null) {
      this.state.resetAt(offset)
      if (this.state.pendingLength !== null && offset === this.state.pendingLength) {
        this.state.length = this.state.pendingLength
        this.state.pendingLength = null
      }
    } else {
      this.state.valid = false
    }
    return res
  }

  async uploadAll(plan, reader) {
    const inflight = new Set()
    const confirms = []
    let failure = null
    const fail = (err) => {
      if (failure === null) {
        failure = err
        this.controller.abort()
      }
    }
    const buffered = this.state.buffer
    for (const part of plan) {
      while (inflight.size >= this.stack.parallel && failure === null) await Promise.race(inflight)
      if (failure !== null) break
      let data
      try {
        const pieces = []
        let from = part.offset
        if (buffered.size > 0 && part.offset === buffered.start) {
          pieces.push(...buffered.pieces)
          from += buffered.size
        }
        const own = part.offset + part.length - from
        if (own > 0) pieces.push(await reader.take(own))
        data = join(pieces)
        this.check()
      } catch (err) {
        fail(err)
        break
      }
        // A slot frees as soon as its PUT is done; the confirm goes on beside the next PUTs.
      const task = this.uploadPart(part, data)
        .then(() => { confirms.push(this.confirmPart(part).catch(fail)) })
        .catch(fail).finally(() => inflight.delete(task))
      inflight.add(task)
    }
    await Promise.all(inflight)
    this.confirmer.flush()
    await Promise.all(confirms)
    if (failure !== null) throw failure
  }

  /** Once the gateway has confirmed the part (with others of the same batch): its offset counts. */
  async confirmPart(part) {
    const offset = await this.confirmer.add(part.number)
    this.confirmedOffsets.push(offset)
    this.stack._emit('part', { url: this.state.url, part: part.number, bytes: part.length, offset })
  }

  async uploadPart(part, data) {
    const size = dataSize(data)
    if (size !== part.length) throw new AdapterError(`part ${part.number}: ${size} bytes instead of ${part.length}`)
    let checksum = null
    if (this.state.checksum) checksum = await partChecksum(this.state.checksum, data)
    this.check()
    let signed = await this.urlFor(part.number, checksum, false)
    if (signed !== null) {
      if (signed.length !== part.length) {
        throw new AdapterError(`part ${part.number}: the gateway planned ${signed.length} bytes, this client ${part.length}`)
      }
      let res = await this.put(part, signed, data)
      if (res.status === 403) {
        // An expired (or otherwise refused) URL: sign the part again and retry once.
        this.stack._emit('resign', { url: this.state.url, part: part.number })
        this.state.urls.delete(part.number)
        signed = await this.urlFor(part.number, checksum, true)
        if (signed !== null) res = await this.put(part, signed, data)
      }
      if (signed !== null && (res.status < 200 || res.status >= 300)) {
        throw new S3Error(res.status, part.number, res.body)
      }
      this.state.urls.delete(part.number)
    }
    this.check()
    this.sent.set(part.number, part.length)
    this.progress()
  }

  /** `PUT {upload}/parts` for parts S3 holds: the gateway checks them with S3 and answers the offset. */
  async confirmBatch(numbers) {
    const confirmed = await this.req._gateway('PUT', `${this.state.url}/parts`, {}, { parts: numbers })
    const offset = toInt(confirmed.getHeader('Upload-Offset'))
    if (offset === null) throw new AdapterError('the gateway confirmed parts without an Upload-Offset')
    return offset
  }

  progress() {
    let sent = this.base
    for (const bytes of this.sent.values()) sent += bytes
    const size = bodySize(this.body)
    this.req._progress(Math.max(0, Math.min(size, sent - this.offset)))
  }

  async put(part, signed, data) {
    this.check()
    const onProgress = (loaded) => {
      this.sent.set(part.number, loaded)
      this.progress()
    }
    const headers = { ...signed.headers }
    if (this.stack.transport === 'xhr') return xhrPut(signed.url, headers, data, this.signal, onProgress)
    const res = await this.stack._fetch(signed.url, {
      method: 'PUT', headers, body: data, signal: this.signal, cache: 'no-store', credentials: 'omit',
    })
    const body = await res.text()
    return { status: res.status, body }
  }

  /** A fresh URL for the part (null: the gateway says it is already confirmed). One sign at a time. */
  urlFor(number, checksum, force) {
    const state = this.state
    const fresh = (p) => p !== undefined && p.expiresAtMs - Date.now() > URL_MARGIN_MS
    if (!force && fresh(state.urls.get(number))) return Promise.resolve(state.urls.get(number))
    const job = state.signing.then(async () => {
      this.check()
      if (!force && fresh(state.urls.get(number))) return state.urls.get(number)
      let batch
      if (checksum !== null) {
        batch = [{ number, checksum }] // a checksum needs the part's bytes: one at a time
      } else {
        const ahead = this.upcoming.filter((n) => n > number && !fresh(state.urls.get(n)))
        batch = [number, ...ahead.slice(0, this.stack.signBatch - 1)]
      }
      for (;;) {
        const request = { parts: batch }
        const declaring = state.pendingLength
        if (declaring !== null) request.length = declaring
        let answer
        try {
          answer = await this.req._gateway('POST', `${state.url}/parts`, {}, request)
        } catch (err) {
          const confirmed = err instanceof GatewayError && err.code === 'part_confirmed' ? err.parts : []
          if (confirmed.length === 0) throw err
          // S3 holds them already (an earlier attempt): skip their PUT, keep the confirm.
          batch = batch.filter((item) => !confirmed.includes(typeof item === 'number' ? item : item.number))
          if (batch.length === 0 || confirmed.includes(number)) return null
          continue
        }
        const data = JSON.parse(answer.getBody())
        if (declaring !== null && state.pendingLength === declaring) {
          state.length = declaring
          state.pendingLength = null
        }
        if (typeof data.length === 'number') state.length = data.length
        const expiresAtMs = Date.now() + (data.expires_in ?? 0) * 1000
        for (const part of data.parts) {
          state.urls.set(part.number, { url: part.url, headers: part.headers || {}, length: part.length, expiresAtMs })
        }
        const mine = state.urls.get(number)
        if (!mine) throw new AdapterError(`the gateway did not sign part ${number}`)
        return mine
      }
    })
    state.signing = job.catch(() => {})
    return job
  }
}

/** Reads a PATCH body front to back: Blob, bytes, or a Node Readable (fs.ReadStream slices). */
class BodyReader {
  constructor(body, size) {
    this.body = body
    this.size = size
    this.position = 0
    this.iterator = null
    this.pending = null // leftover bytes of the last stream chunk
  }

  async take(count) {
    const body = this.body
    const from = this.position
    this.position += count
    if (isBlob(body)) return body.slice(from, from + count)
    if (body instanceof ArrayBuffer) return new Uint8Array(body, from, count)
    if (ArrayBuffer.isView(body)) return new Uint8Array(body.buffer, body.byteOffset + from, count)
    if (isAsyncIterable(body)) return this.takeFromStream(count)
    throw new AdapterError(`cannot read a PATCH body of type ${Object.prototype.toString.call(body)}`)
  }

  async takeFromStream(count) {
    if (this.iterator === null) this.iterator = this.body[Symbol.asyncIterator]()
    const chunks = []
    let have = 0
    while (have < count) {
      let chunk = this.pending
      this.pending = null
      if (chunk === null) {
        const next = await this.iterator.next()
        if (next.done) throw new AdapterError(`the body ended ${count - have} bytes early`)
        chunk = typeof next.value === 'string' ? new TextEncoder().encode(next.value) : toBytes(next.value)
      }
      const want = count - have
      if (chunk.byteLength > want) {
        this.pending = chunk.subarray(want)
        chunk = chunk.subarray(0, want)
      }
      chunks.push(chunk)
      have += chunk.byteLength
    }
    return concatBytes(chunks, count)
  }

  close() {
    if (this.body && typeof this.body.destroy === 'function' && isAsyncIterable(this.body)) this.body.destroy()
  }
}

/** The S3 PUT in a browser: XHR, for upload progress events. */
function xhrPut(url, headers, data, signal, onProgress) {
  return new Promise((resolve, reject) => {
    if (signal.aborted) {
      reject(abortError())
      return
    }
    const xhr = new XMLHttpRequest()
    const onAbort = () => xhr.abort()
    const done = () => signal.removeEventListener('abort', onAbort)
    xhr.open('PUT', url, true)
    for (const [name, value] of Object.entries(headers)) xhr.setRequestHeader(name, value)
    xhr.upload.onprogress = (event) => {
      if (event.lengthComputable) onProgress(event.loaded)
    }
    xhr.onload = () => {
      done()
      resolve({ status: xhr.status, body: xhr.responseText })
    }
    xhr.onerror = () => {
      done()
      reject(new TypeError('network error while uploading a part to S3'))
    }
    xhr.ontimeout = xhr.onerror
    xhr.onabort = () => {
      done()
      reject(abortError())
    }
    signal.addEventListener('abort', onAbort, { once: true })
    xhr.send(data)
  })
}

// -- part checksums --------------------------------------------------------------------------------

const CRC32C_TABLE = (() => {
  const table = new Uint32Array(256)
  for (let i = 0; i < 256; i++) {
    let c = i
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1
    table[i] = c >>> 0
  }
  return table
})()

function crc32c(bytes) {
  let c = 0xffffffff
  for (let i = 0; i < bytes.length; i++) c = CRC32C_TABLE[(c ^ bytes[i]) & 0xff] ^ (c >>> 8)
  c = (c ^ 0xffffffff) >>> 0
  return new Uint8Array([c >>> 24, (c >>> 16) & 0xff, (c >>> 8) & 0xff, c & 0xff])
}

const CHECKSUMS = {
  crc32c: async (bytes) => crc32c(bytes),
  sha256: async (bytes) => new Uint8Array(await globalThis.crypto.subtle.digest('SHA-256', bytes)),
}

async function partChecksum(algorithm, data) {
  const digest = CHECKSUMS[algorithm]
  if (!digest) {
    throw new AdapterError(`this upload wants ${algorithm} part checksums; this adapter computes crc32c and sha256`)
  }
  const bytes = isBlob(data) ? new Uint8Array(await data.arrayBuffer()) : data
  return base64(await digest(bytes))
}

function base64(bytes) {
  let binary = ''
  for (let i = 0; i < bytes.length; i++) binary += String.fromCharCode(bytes[i])
  return btoa(binary)
}

// -- responses and errors --------------------------------------------------------------------------

/** What tus-js-client gets for a PATCH sent direct (or a creation-with-upload: `base` is the real 201). */
class SyntheticResponse {
  constructor(status, headers = {}, body = '', { base = null, underlying = null } = {}) {
    this._status = status
    this._headers = headers
    this._body = body
    this._base = base
    this._underlying = underlying
  }

  getStatus() {
    return this._status
  }

  getHeader(name) {
    const own = headerOf(this._headers, name)
    if (own !== undefined || this._base === null) return own
    return this._base.getHeader(name)
  }

  getBody() {
    return this._body
  }

  getUnderlyingObject() {
    return this._underlying
  }
}

class FetchResponse {
  constructor(res, body) {
    this._res = res
    this._body = body
  }

  getStatus() {
    return this._res.status
  }

  getHeader(name) {
    return this._res.headers.get(name) ?? undefined
  }

  getBody() {
    return this._body
  }

  getUnderlyingObject() {
    return this._res
  }
}

class GatewayError extends Error {
  static from(method, url, res, text) {
    let code = 'http_error'
    let message = text
    let parts = []
    try {
      const error = JSON.parse(text).error
      code = error.code
      message = error.message
      parts = (error.details && Array.isArray(error.details.parts)) ? error.details.parts : []
    } catch {
      // not the gateway's JSON
    }
    const headers = { 'Content-Type': 'application/json' }
    const retryAfter = res.headers.get('Retry-After')
    if (retryAfter) headers['Retry-After'] = retryAfter
    const status = res.status === 429 ? 503 : res.status // still throttled after our retries: let tus retry
    const err = new GatewayError(`${method} ${url} answered ${res.status} ${code}: ${message}`)
    Object.assign(err, { status, code, parts, headers, body: text })
    return err
  }
}

class S3Error extends Error {
  constructor(status, part, body) {
    const code = /<Code>([^<]*)<\/Code>/.exec(body || '')
    super(`S3 answered ${status}${code ? ` ${code[1]}` : ''} to part ${part}`)
    this.status = status
    this.part = part
  }
}

class AdapterError extends Error {}

function synthetic(status, code, message) {
  return new SyntheticResponse(status, { 'Content-Type': 'application/json' },
    JSON.stringify({ error: { code, message } }))
}

function abortError() {
  if (typeof DOMException === 'function') return new DOMException('the upload was aborted', 'AbortError')
  const err = new Error('the upload was aborted')
  err.name = 'AbortError'
  return err
}

// -- small helpers ----------------------------------------------------------------------------------

function headerOf(headers, name) {
  if (Object.prototype.hasOwnProperty.call(headers, name)) return headers[name]
  const lower = name.toLowerCase()
  for (const key of Object.keys(headers)) if (key.toLowerCase() === lower) return headers[key]
  return undefined
}

function toInt(value) {
  if (value === undefined || value === null) return null
  const text = String(value).trim()
  return /^[0-9]+$/.test(text) ? Number.parseInt(text, 10) : null
}

function absoluteUrl(url) {
  return new URL(url, globalThis.location?.href).href
}

function normalizeUrl(url) {
  return absoluteUrl(url)
}

function isBlob(value) {
  return typeof Blob === 'function' && value instanceof Blob
}

function isAsyncIterable(value) {
  return value !== null && typeof value === 'object' && typeof value[Symbol.asyncIterator] === 'function'
}

function bodySize(body) {
  if (body === null || body === undefined) return 0
  if (isBlob(body)) return body.size
  if (body instanceof ArrayBuffer || ArrayBuffer.isView(body)) return body.byteLength
  if (typeof body.size === 'number') return body.size // tus-js-client sets it on fs.ReadStream slices
  throw new AdapterError('a PATCH body of unknown size (use a File, Blob, Buffer or a file stream)')
}

function dataSize(data) {
  return isBlob(data) ? data.size : data.byteLength
}

function toBytes(chunk) {
  if (chunk instanceof Uint8Array) return chunk
  if (chunk instanceof ArrayBuffer) return new Uint8Array(chunk)
  if (ArrayBuffer.isView(chunk)) return new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.byteLength)
  throw new AdapterError('a stream chunk that is not bytes')
}

function concatBytes(chunks, size) {
  if (chunks.length === 1) return chunks[0]
  const out = new Uint8Array(size)
  let at = 0
  for (const chunk of chunks) {
    out.set(chunk, at)
    at += chunk.byteLength
  }
  return out
}

/** One part from buffered pieces and new bytes: Blobs stay Blobs (no copy), bytes are concatenated. */
function join(pieces) {
  if (pieces.length === 1) return pieces[0]
  if (pieces.some(isBlob)) return new Blob(pieces)
  return concatBytes(pieces, pieces.reduce((sum, piece) => sum + piece.byteLength, 0))
}

/** A fallback request's send() that rejects with an AbortError on abort (XHR stacks never settle then). */
function abortable(request, sending, signal) {
  if (signal.aborted) {
    request.abort()
    return Promise.reject(abortError())
  }
  let onAbort
  const aborted = new Promise((_, reject) => {
    onAbort = () => {
      request.abort()
      reject(abortError())
    }
    signal.addEventListener('abort', onAbort, { once: true })
  })
  // Whichever loses the race must not become an unhandled rejection.
  sending.catch(() => {})
  aborted.catch(() => {})
  return Promise.race([sending, aborted]).finally(() => signal.removeEventListener('abort', onAbort))
}

function copyCredentials(from, to) {
  if (from && to && from.withCredentials === true && 'withCredentials' in to) to.withCredentials = true
}

function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    if (signal.aborted) {
      reject(abortError())
      return
    }
    const timer = setTimeout(() => {
      signal.removeEventListener('abort', onAbort)
      resolve()
    }, ms)
    const onAbort = () => {
      clearTimeout(timer)
      reject(abortError())
    }
    signal.addEventListener('abort', onAbort, { once: true })
  })
}

export { uppySignRequest } from './uppy.js'
export default DirectHttpStack
