// The demo page of `gateway dev`: tus-js-client (the vendored global `tus`) with the DirectHttpStack,
// so the bytes go from this browser straight to S3. The token comes from the address: #token=...
import { DirectHttpStack } from '/clients/js/index.js'

const tus = window.tus
const $ = (selector, root = document) => root.querySelector(selector)

const params = new URLSearchParams(location.hash.slice(1))
const token = params.get('token') || ''
const endpoint = new URL(params.get('endpoint') || '/files', location.href).href

$('#endpoint').textContent = endpoint
if (!token) {
  $('#no-token').hidden = false
} else {
  const claims = jwtClaims(token)
  if (claims && claims.sub) $('#who').textContent = `Signed in as ${claims.sub}`
}

const input = $('#files')
input.addEventListener('change', () => {
  addFiles(input.files)
  input.value = '' // picking the same file again (after a reload) is a change too
})

const drop = $('#drop')
drop.addEventListener('dragover', (event) => {
  event.preventDefault()
  drop.classList.add('over')
})
drop.addEventListener('dragleave', () => drop.classList.remove('over'))
drop.addEventListener('drop', (event) => {
  event.preventDefault()
  drop.classList.remove('over')
  addFiles(event.dataTransfer.files)
})

function addFiles(files) {
  for (const file of files) startUpload(file)
}

function startUpload(file) {
  const row = $('#upload-row').content.firstElementChild.cloneNode(true)
  $('.name', row).textContent = file.name
  $('.name', row).title = file.name
  $('.size', row).textContent = formatBytes(file.size)
  $('#uploads').prepend(row)

  const view = {
    total: file.size, sent: 0, confirmed: 0, samples: [], resumedFrom: null, state: 'starting', note: '',
  }
  const parallel = clamp(Number.parseInt($('#parallel').value, 10) || 4, 1, 16)
  const chunkSize = Number($('#chunk').value) || Number.POSITIVE_INFINITY

  const stack = new DirectHttpStack({
    parallel,
    onEvent: (type, detail) => {
      if (type === 'part') view.confirmed = Math.max(view.confirmed, detail.offset)
      render()
    },
  })

  const upload = new tus.Upload(file, {
    endpoint,
    chunkSize,
    retryDelays: [0, 1000, 3000, 5000, 10000],
    metadata: { filename: file.name, filetype: file.type || 'application/octet-stream' },
    headers: { Authorization: `Bearer ${token}` },
    httpStack: stack,
    removeFingerprintOnSuccess: true,
    onUploadUrlAvailable: () => {
      row.dataset.uploadUrl = upload.url
    },
    onAfterResponse: (req, res) => {
      const status = res.getStatus()
      if (req.getMethod() !== 'HEAD' || status < 200 || status >= 300) return
      // A resumed upload: the gateway says how much S3 already holds.
      const offset = Number.parseInt(res.getHeader('Upload-Offset'), 10)
      view.confirmed = offset
      if (view.resumedFrom === null) {
        view.resumedFrom = offset
        row.dataset.resumedFrom = String(offset)
        view.note = offset > 0 ? `resumed at ${formatBytes(offset)}` : ''
      }
      view.sent = offset
      view.samples = []
      render()
    },
    onProgress: (sent) => {
      if (view.state === 'paused') return
      view.state = 'uploading'
      view.sent = sent
      const now = performance.now()
      view.samples.push({ t: now, bytes: sent })
      while (view.samples.length > 2 && now - view.samples[0].t > 5000) view.samples.shift()
      render()
    },
    onSuccess: () => {
      view.state = 'done'
      view.sent = view.total
      view.confirmed = view.total
      render()
      showDownload(upload.url, row).catch((err) => {
        $('.status', row).textContent = `Done, but no download link: ${err.message}`
      })
    },
    onError: (err) => {
      view.state = 'error'
      view.error = shortError(err)
      render()
    },
  })

  const pause = $('.pause', row)
  const resume = $('.resume', row)
  pause.addEventListener('click', () => {
    upload.abort()
    view.state = 'paused'
    render()
  })
  resume.addEventListener('click', () => {
    view.state = 'uploading'
    view.samples = []
    render()
    upload.start()
  })

  let frame = 0
  function render() {
    if (frame) return
    frame = requestAnimationFrame(() => {
      frame = 0
      draw()
    })
  }

  function draw() {
    const { total, sent, confirmed, state } = view
    row.dataset.state = state
    row.dataset.sent = String(sent)
    row.dataset.confirmed = String(confirmed)
    const pct = (bytes) => (total > 0 ? Math.min(100, (bytes / total) * 100) : 100)
    $('.bar .sent', row).style.width = `${pct(Math.max(sent, confirmed))}%`
    $('.bar .confirmed', row).style.width = `${pct(confirmed)}%`
    $('.bar', row).setAttribute('aria-valuenow', pct(sent).toFixed(0))
    pause.hidden = state !== 'uploading' && state !== 'starting'
    resume.hidden = state !== 'paused' && state !== 'error'
    resume.textContent = state === 'error' ? 'Retry' : 'Resume'

    const status = $('.status', row)
    const stats = $('.stats', row)
    const held = `S3 holds ${formatBytes(confirmed)}`
    const note = view.note ? ` · ${view.note}` : ''
    if (state === 'starting') {
      status.textContent = 'Starting…'
      stats.textContent = ''
    } else if (state === 'uploading') {
      status.textContent = `Uploading straight to S3 · ${held}${note}`
      const speed = speedOf(view.samples)
      const left = speed > 0 ? `${formatDuration((total - sent) / speed)} left` : ''
      stats.textContent = [`${pct(sent).toFixed(0)}%`, speed > 0 ? `${formatBytes(speed)}/s` : '', left]
        .filter(Boolean).join(' · ')
    } else if (state === 'paused') {
      status.textContent = `Paused · ${held}`
      stats.textContent = `${pct(confirmed).toFixed(0)}%`
    } else if (state === 'done') {
      status.textContent = `Done · in S3${note}`
      stats.textContent = formatBytes(total)
    } else {
      status.textContent = `Failed: ${view.error}`
      stats.textContent = held
    }
  }

  upload.findPreviousUploads().then((previous) => {
    if (previous.length > 0) {
      // The newest record of this file (name, type, size, mtime, endpoint) from localStorage.
      previous.sort((a, b) => new Date(b.creationTime) - new Date(a.creationTime))
      upload.resumeFromPreviousUpload(previous[0])
      view.note = 'looking up where it stopped'
    }
    render()
    upload.start()
  })
}

/** `GET {upload}` with Accept: application/json answers a presigned S3 GET that lives a few minutes. */
async function downloadUrl(uploadUrl) {
  for (let attempt = 0; attempt < 20; attempt++) {
    const res = await fetch(uploadUrl, {
      headers: { Authorization: `Bearer ${token}`, Accept: 'application/json' },
      cache: 'no-store',
    })
    if (res.status === 409) { // still completing
      await new Promise((resolve) => setTimeout(resolve, 1000 * (Number(res.headers.get('Retry-After')) || 1)))
      continue
    }
    if (!res.ok) throw new Error(`the gateway answered ${res.status}`)
    return (await res.json()).url
  }
  throw new Error('the upload is still being completed')
}

async function showDownload(uploadUrl, row) {
  const link = $('.download', row)
  let fetchedAt = Date.now()
  link.href = await downloadUrl(uploadUrl)
  link.hidden = false
  link.addEventListener('click', async (event) => {
    if (Date.now() - fetchedAt < 4 * 60 * 1000) return
    event.preventDefault() // the presigned URL is about to expire: ask for a fresh one
    link.href = await downloadUrl(uploadUrl)
    fetchedAt = Date.now()
    window.open(link.href, '_blank', 'noopener')
  })
}

function speedOf(samples) {
  if (samples.length < 2) return 0
  const first = samples[0]
  const last = samples[samples.length - 1]
  const seconds = (last.t - first.t) / 1000
  return seconds > 0.2 ? Math.max(0, (last.bytes - first.bytes) / seconds) : 0
}

function formatBytes(bytes) {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB']
  let value = bytes
  let unit = 0
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024
    unit++
  }
  return `${value.toFixed(unit === 0 || value >= 100 ? 0 : 1)} ${units[unit]}`
}

function formatDuration(seconds) {
  if (!Number.isFinite(seconds)) return ''
  const s = Math.max(0, Math.round(seconds))
  if (s < 60) return `${s} s`
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`
}

function shortError(err) {
  const res = err && err.originalResponse
  if (res) {
    try {
      const body = JSON.parse(res.getBody())
      if (body && body.error) return `${res.getStatus()} ${body.error.code}: ${body.error.message}`
    } catch {
      // not JSON
    }
    return `HTTP ${res.getStatus()}`
  }
  return err && err.message ? err.message.split(', originated from')[0] : String(err)
}

function jwtClaims(jwt) {
  try {
    const payload = jwt.split('.')[1].replace(/-/g, '+').replace(/_/g, '/')
    return JSON.parse(atob(payload.padEnd(Math.ceil(payload.length / 4) * 4, '=')))
  } catch {
    return null
  }
}

function clamp(value, low, high) {
  return Math.min(high, Math.max(low, value))
}
