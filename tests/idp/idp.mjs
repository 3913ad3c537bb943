// A real OIDC identity provider for the tests (oauth2-mock-server 8), driven by tests/support/idp.py.
//
//   node idp.mjs [PORT] [--jwks-max-age=N] [--alg=RS256] [--exit-on-stdin-close]
//
//   PORT                   port on 127.0.0.1 (env IDP_PORT; 0 or absent: a free port)
//   --jwks-max-age=N       the JWKS response carries `Cache-Control: max-age=N` (env IDP_JWKS_MAX_AGE,
//                          default 300); a negative N sends no Cache-Control header at all
//   --alg=ALG              algorithm of the first signing key (env IDP_ALG, default RS256)
//   --exit-on-stdin-close  exit when stdin reaches EOF (the Python helper holds a pipe open, so the IdP
//                          dies with the test process even when that is killed)
//
// Once listening it prints one JSON line on stdout:
//   {"issuer", "port", "jwks_uri", "discovery_uri", "kid", "alg", "jwks_max_age"}
//
// The library's own endpoints (/.well-known/openid-configuration, /jwks, /token, /authorize, /userinfo,
// ...) are served as they are, by OAuth2Service's request handler (an Express app), behind a small
// node:http front that counts discovery and JWKS hits, adds the JWKS Cache-Control header (v8 has no
// hook on the JWKS response) and serves the control endpoints on the SAME port:
//
//   POST /control/token  {sub?, aud?, scope?, exp_in?, claims?, alg?, kid?}  -> {"token", "kid", "alg"}
//        signed by the current (newest) key, or by the newest key of `alg` when given; iss = issuer,
//        iat = now, nbf = now - 10, exp = now + exp_in (default 300; negative: already expired).
//        `scope` is a string or a list (joined by spaces); `claims` are merged last, so they can
//        override iss/iat/nbf/exp/...; a claim given as null is removed. `kid` replaces the header's
//        kid (the signature stays the real key's): for unknown-kid tests.
//   POST /control/rotate {alg?: "RS256"|"ES256"|"PS256"|"EdDSA"|..., drop_old?: bool}
//        -> {"kid": new kid, "alg", "kids": every kid in the JWKS, oldest first}
//        The new key becomes current; older keys stay in the JWKS unless drop_old.
//   GET  /control/stats  -> {"jwks_requests", "discovery_requests"} (GET/HEAD hits since start)
import { createServer } from 'node:http'

import { OAuth2Issuer, OAuth2Service } from 'oauth2-mock-server'

const HOST = '127.0.0.1'
const JWKS_PATH = '/jwks'
const DISCOVERY_PATH = '/.well-known/openid-configuration'
const DEFAULT_EXP_IN = 300

function parseArgs (argv) {
  const options = {
    port: Number(process.env.IDP_PORT ?? 0),
    jwksMaxAge: Number(process.env.IDP_JWKS_MAX_AGE ?? 300),
    alg: process.env.IDP_ALG ?? 'RS256',
    exitOnStdinClose: false
  }
  for (const arg of argv) {
    const [name, value] = arg.split(/=(.*)/s)
    if (name === '--jwks-max-age') options.jwksMaxAge = Number(value)
    else if (name === '--alg') options.alg = value
    else if (name === '--exit-on-stdin-close') options.exitOnStdinClose = true
    else if (/^\d+$/.test(arg)) options.port = Number(arg)
    else throw new Error(`unknown argument ${JSON.stringify(arg)}`)
  }
  if (!Number.isInteger(options.port) || options.port < 0 || options.port > 65535) {
    throw new Error(`invalid port ${options.port}`)
  }
  if (!Number.isInteger(options.jwksMaxAge)) throw new Error(`invalid --jwks-max-age ${options.jwksMaxAge}`)
  return options
}

class ControlError extends Error {
  constructor (status, message) {
    super(message)
    this.status = status
  }
}

const options = parseArgs(process.argv.slice(2))
const stats = { jwks_requests: 0, discovery_requests: 0 }
let issuerUrl // http://127.0.0.1:PORT, known once listening
let keys = [] // {kid, alg} of the keys in the JWKS, oldest first; the last one is current
let current // {issuer: OAuth2Issuer, service: OAuth2Service}: replaced whole when old keys are dropped

// JWKStore can add keys but not remove them: dropping keys means a fresh issuer + service
// (same URL), to which the front below hands every request from then on.
function freshProvider () {
  const issuer = new OAuth2Issuer()
  issuer.url = issuerUrl
  return { issuer, service: new OAuth2Service(issuer) }
}

async function addKey (alg) {
  const jwk = await current.issuer.keys.generate(alg)
  keys.push({ kid: jwk.kid, alg: jwk.alg })
  return jwk
}

async function rotate ({ alg = 'RS256', drop_old: dropOld = false } = {}) {
  if (typeof alg !== 'string') throw new ControlError(400, 'alg must be a string')
  const previous = current
  if (dropOld) {
    current = freshProvider()
    keys = []
  }
  let jwk
  try {
    jwk = await addKey(alg)
  } catch (error) {
    if (dropOld) current = previous // keep serving the old keys when the algorithm is refused
    throw new ControlError(400, `cannot generate a ${alg} key: ${error.message}`)
  }
  return { kid: jwk.kid, alg: jwk.alg, kids: keys.map((k) => k.kid) }
}

async function mintToken (body) {
  const { sub, aud, scope, claims = {}, alg, kid } = body
  const expIn = body.exp_in ?? DEFAULT_EXP_IN
  if (!Number.isFinite(expIn)) throw new ControlError(400, 'exp_in must be a number of seconds')
  if (claims === null || typeof claims !== 'object' || Array.isArray(claims)) {
    throw new ControlError(400, 'claims must be an object')
  }
  const signer = alg === undefined || alg === null
    ? keys.at(-1)
    : keys.findLast((k) => k.alg === alg)
  if (signer === undefined) throw new ControlError(400, `no ${alg} key in the JWKS (rotate to one first)`)
  const token = await current.issuer.buildToken({
    kid: signer.kid,
    expiresIn: Math.trunc(expIn),
    scopesOrTransform: (header, payload) => {
      if (sub !== undefined && sub !== null) payload.sub = sub
      if (aud !== undefined && aud !== null) payload.aud = aud
      if (scope !== undefined && scope !== null) payload.scope = Array.isArray(scope) ? scope.join(' ') : scope
      for (const [name, value] of Object.entries(claims)) {
        if (value === null) delete payload[name]
        else payload[name] = value
      }
      if (kid !== undefined && kid !== null) header.kid = kid
    }
  })
  return { token, kid: kid ?? signer.kid, alg: signer.alg }
}

async function readJson (req) {
  const chunks = []
  for await (const chunk of req) chunks.push(chunk)
  const text = Buffer.concat(chunks).toString('utf8').trim()
  if (text === '') return {}
  try {
    const body = JSON.parse(text)
    if (body === null || typeof body !== 'object' || Array.isArray(body)) throw new Error('not an object')
    return body
  } catch (error) {
    throw new ControlError(400, `the body must be a JSON object: ${error.message}`)
  }
}

function sendJson (res, status, body) {
  const data = JSON.stringify(body)
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(data) })
  res.end(data)
}

async function control (req, res, path) {
  try {
    if (req.method === 'POST' && path === '/control/token') return sendJson(res, 200, await mintToken(await readJson(req)))
    if (req.method === 'POST' && path === '/control/rotate') return sendJson(res, 200, await rotate(await readJson(req)))
    if (req.method === 'GET' && path === '/control/stats') return sendJson(res, 200, { ...stats })
    throw new ControlError(404, `no control endpoint ${req.method} ${path}`)
  } catch (error) {
    const status = error instanceof ControlError ? error.status : 500
    if (status === 500) console.error('control endpoint failed:', error)
    sendJson(res, status, { error: error.message })
  }
}

const server = createServer((req, res) => {
  const path = new URL(req.url, 'http://idp.invalid').pathname.replace(/(.)\/+$/, '$1')
  if (path.startsWith('/control/')) {
    control(req, res, path)
    return
  }
  if (req.method === 'GET' || req.method === 'HEAD') {
    if (path === JWKS_PATH) {
      stats.jwks_requests += 1
      // Express keeps headers set before it runs: res.json() only adds Content-Type and ETag.
      if (options.jwksMaxAge >= 0) res.setHeader('Cache-Control', `max-age=${options.jwksMaxAge}`)
    } else if (path === DISCOVERY_PATH) {
      stats.discovery_requests += 1
    }
  }
  current.service.requestHandler(req, res)
})

let stopping = false
function stop () {
  if (stopping) return
  stopping = true
  server.close(() => process.exit(0))
  server.closeAllConnections()
  setTimeout(() => process.exit(0), 2000).unref()
}
process.on('SIGTERM', stop)
process.on('SIGINT', stop)
if (options.exitOnStdinClose) {
  process.stdin.on('end', stop)
  process.stdin.on('close', stop)
  process.stdin.resume()
}

current = freshProvider()
const first = await addKey(options.alg) // before listening: no request ever finds the IdP without a key
await new Promise((resolve, reject) => {
  server.once('error', reject)
  server.listen(options.port, HOST, resolve)
})
const { port } = server.address()
issuerUrl = `http://${HOST}:${port}`
current.issuer.url = issuerUrl
process.stdout.write(JSON.stringify({
  issuer: issuerUrl,
  port,
  jwks_uri: `${issuerUrl}${JWKS_PATH}`,
  discovery_uri: `${issuerUrl}${DISCOVERY_PATH}`,
  kid: first.kid,
  alg: first.alg,
  jwks_max_age: options.jwksMaxAge
}) + '\n')
