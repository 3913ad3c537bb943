import type { HttpRequest, HttpStack } from 'tus-js-client'

export interface DirectHttpStackOptions {
  /** Part PUTs in flight at once per PATCH (default 4). */
  parallel?: number
  /** Stack for the gateway's own requests (POST, HEAD, DELETE); default `new tus.DefaultHttpStack()` of the global `tus`. */
  fallback?: HttpStack
  /** Parts per sign request (default the larger of 16 and 2 x parallel). */
  signBatch?: number
  /** Ask for per-part checksums at creation (`Upload-Part-Checksum`); S3 then verifies each part. */
  checksum?: 'crc32c' | 'sha256'
  /** Part size hint sent at creation (`Upload-Part-Size`, 5 MiB to 5 GiB). */
  partSize?: number
  /** How parts are PUT to S3: 'xhr' (upload progress; the default where XMLHttpRequest exists) or 'fetch'. */
  transport?: 'xhr' | 'fetch'
  /** fetch for the gateway calls (and for part PUTs with transport 'fetch'). */
  fetch?: typeof fetch
  /** fetch credentials for the gateway calls (default: 'include' when the request's XHR has withCredentials). */
  credentials?: RequestCredentials
  /** Observe the stack: 'part' { url, part, bytes, offset }, 'resign' { url, part }, 'restart' { url, offset, expected },
   *  'forward' { url, offset, bytes }, 'error' { status?, part?, message }. */
  onEvent?: (type: 'part' | 'resign' | 'restart' | 'forward' | 'error', detail: Record<string, unknown>) => void
}

export declare class DirectHttpStack implements HttpStack {
  constructor(options?: DirectHttpStackOptions)
  readonly parallel: number
  createRequest(method: string, url: string): HttpRequest
  getName(): string
}

/** A request Uppy 6's `@uppy/aws-s3` asks its `signRequest` to sign. */
export interface UppySignableRequest {
  method: 'GET' | 'PUT' | 'POST' | 'DELETE'
  key: string
  uploadId?: string
  partNumber?: number
  contentType?: string
}

export interface UppySignRequestOptions {
  /** The gateway's `/files` URL. */
  endpoint: string
  /** The bearer token for the gateway (called before each control-plane request; may refresh). */
  getToken: () => string | Promise<string>
  /** Part URLs signed per gateway request (default 16). */
  signAhead?: number
  /** fetch for the gateway calls (default the global fetch). */
  fetch?: typeof fetch
}

/** The `signRequest` for `uppy.use(AwsS3, { signRequest })` (Uppy 6) against tus-s3-gateway. */
export declare function uppySignRequest(options: UppySignRequestOptions):
  (request: UppySignableRequest) => Promise<{ url: string, headers?: Record<string, string> }>

export default DirectHttpStack
