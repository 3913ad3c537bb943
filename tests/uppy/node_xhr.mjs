// Node has no XMLHttpRequest, which Uppy's S3 plugins use for their requests; this small XHR on top of
// fetch stands in, so the plugins' own code (ETag from the response headers, progress, timeouts and
// aborts) runs unchanged. Shared by tests/uppy (Uppy 5) and tests/uppy6 (Uppy 6); no package imports.
//
// installXMLHttpRequest(fetchFn, recordRequest): every send() calls recordRequest({method, url, size})
// and sets `status` (or `error`) on the object it returns.

export function installXMLHttpRequest(fetchFn, recordRequest) {
  class NodeXMLHttpRequest {
    constructor() {
      this.status = 0
      this.responseText = ''
      this.responseType = ''
      this.timeout = 0
      this.upload = { addEventListener: (type, fn) => this.#on(`upload:${type}`, fn) }
      this.#listeners = new Map()
      this.#headers = {}
      this.#controller = new AbortController()
    }
  
    #listeners
    #headers
    #controller
    #method = 'GET'
    #url = ''
    #responseHeaders = new Headers()
    #timedOut = false
  
    #on(type, fn) {
      if (!this.#listeners.has(type)) this.#listeners.set(type, [])
      this.#listeners.get(type).push(fn)
    }
  
    #emit(type, event = {}) {
      const full = { target: this, ...event }
      for (const fn of this.#listeners.get(type) ?? []) fn(full)
      // Uppy 6's fetcher sets onload/onerror/upload.onprogress instead of adding listeners.
      const handler = type.startsWith('upload:') ? this.upload[`on${type.slice(7)}`] : this[`on${type}`]
      if (typeof handler === 'function') handler(full)
    }
  
    addEventListener(type, fn) {
      this.#on(type, fn)
    }
  
    open(method, url) {
      this.#method = method
      this.#url = url
    }
  
    setRequestHeader(name, value) {
      this.#headers[name] = value
    }
  
    getResponseHeader(name) {
      return this.#responseHeaders.get(name)
    }

    getAllResponseHeaders() {
      return [...this.#responseHeaders].map(([name, value]) => `${name}: ${value}`).join('\r\n')
    }
  
    abort() {
      this.#controller.abort()
    }
  
    async send(body) {
      const record = recordRequest({ method: this.#method, url: this.#url, size: body?.size ?? null })
      const timer = this.timeout
        ? setTimeout(() => {
            this.#timedOut = true
            this.#controller.abort()
          }, this.timeout)
        : null
      try {
        const response = await fetchFn(this.#url, {
          method: this.#method,
          headers: this.#headers,
          body,
          signal: this.#controller.signal,
        })
        this.#responseHeaders = response.headers
        this.responseText = await response.text()
        this.status = response.status
        this.statusText = response.statusText
        record.status = response.status
        if (body?.size != null) {
          this.#emit('upload:progress', { loaded: body.size, total: body.size, lengthComputable: true })
        }
        this.#emit('load')
      } catch (err) {
        record.error = String(err?.message ?? err)
        if (this.#timedOut) this.#emit('timeout')
        else if (this.#controller.signal.aborted) this.#emit('abort')
        else this.#emit('error')
      } finally {
        if (timer) clearTimeout(timer)
      }
    }
  }
  globalThis.XMLHttpRequest = NodeXMLHttpRequest
}
