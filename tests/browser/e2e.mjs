// The demo page in headless Chromium (Debian's /usr/bin/chromium, never a downloaded browser):
// pick a file, let it go partway (the upload is throttled through the DevTools protocol), take a
// screenshot, reload the page mid-upload, pick the same file again, check it resumes from the server's
// offset and finishes, then fetch the finished object through the page's download link.
// Driven by tests/test_browser.py: argv[2] is JSON options, the last stdout line is a JSON result.
//
// options: pageUrl (with #token=... and optionally &endpoint=...), file, size, partSize, parallel,
//          chunk (a value of the page's chunk size select), throttle (upload bytes/s before the reload,
//          -1 = none), reload (default true),
//          screenshots (paths), doneScreenshot (path), executablePath
import { createHash } from 'node:crypto'
import { copyFileSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { chromium } from 'playwright-core'

const options = JSON.parse(process.argv[2])
const log = []
const note = (line) => log.push(`${new Date().toISOString().slice(11, 23)} ${line}`)

const profile = mkdtempSync(join(tmpdir(), 'gateway-chromium-'))
let context
const result = {}
try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath: options.executablePath ?? '/usr/bin/chromium',
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      '--disable-dev-shm-usage'],
    viewport: { width: 860, height: 480 },
    deviceScaleFactor: 1,
  })
  const page = context.pages()[0] ?? await context.newPage()
  page.on('console', (message) => note(`console.${message.type()}: ${message.text()}`))
  page.on('pageerror', (error) => note(`pageerror: ${error.message}`))
  page.on('requestfailed', (request) => note(`requestfailed: ${request.method()} ${request.url().split('?')[0]} ${request.failure()?.errorText}`))

  // Slow the uploads down so the test sees the page mid-upload (DevTools network emulation).
  const cdp = await context.newCDPSession(page)
  await cdp.send('Network.enable')
  const throttle = (bytesPerSecond) => cdp.send('Network.emulateNetworkConditions', {
    offline: false, latency: 0, downloadThroughput: -1, uploadThroughput: bytesPerSecond,
  })
  await throttle(options.throttle)

  await page.goto(options.pageUrl)
  await page.fill('#parallel', String(options.parallel))
  if (options.chunk) await page.selectOption('#chunk', String(options.chunk))
  await page.setInputFiles('#files', options.file)
  note('file chosen')
  const row = () => page.locator('.upload').first()

  if (options.reload !== false) {
    // Partway: S3 holds at least one part, and more is on its way.
    await page.waitForFunction(({ partSize }) => {
      const r = document.querySelector('.upload')
      return r && Number(r.dataset.confirmed) >= partSize
    }, { partSize: options.partSize }, { timeout: 90_000, polling: 100 })
    result.before = await row().evaluate((r) => ({ ...r.dataset }))
    note(`partway: ${JSON.stringify(result.before)}`)
    await page.locator('#parallel').blur()
    for (const path of options.screenshots) mkdirSync(dirname(path), { recursive: true })
    await page.screenshot({ path: options.screenshots[0], fullPage: true })
    for (const path of options.screenshots.slice(1)) copyFileSync(options.screenshots[0], path)

    // Reload mid-upload (in-flight part PUTs die with the page), then pick the same file again.
    await page.reload()
    await throttle(-1)
    note('reloaded')
    await page.setInputFiles('#files', options.file)
    await page.waitForFunction(() => document.querySelector('.upload')?.dataset.resumedFrom !== undefined,
      null, { timeout: 60_000, polling: 50 })
    result.resumedFrom = Number(await row().getAttribute('data-resumed-from'))
    note(`resumed from ${result.resumedFrom}`)
  }
  await page.waitForFunction(() => ['done', 'error'].includes(document.querySelector('.upload')?.dataset.state),
    null, { timeout: 120_000, polling: 100 })
  result.after = await row().evaluate((r) => ({ ...r.dataset }))
  result.status = await row().locator('.status').textContent()
  if (result.after.state === 'done') {
    const link = row().locator('a.download')
    await link.waitFor({ state: 'visible', timeout: 30_000 })
    if (options.doneScreenshot) {
      mkdirSync(dirname(options.doneScreenshot), { recursive: true })
      await page.screenshot({ path: options.doneScreenshot, fullPage: true })
    }
    const href = await link.getAttribute('href')
    const answer = await fetch(href)
    const body = Buffer.from(await answer.arrayBuffer())
    result.download = {
      status: answer.status,
      host: new URL(href).host,
      size: body.length,
      sha256: createHash('sha256').update(body).digest('hex'),
      disposition: answer.headers.get('content-disposition'),
    }
  }
  result.storage = await page.evaluate(() => Object.keys(localStorage).filter((k) => k.startsWith('tus::')))
} catch (err) {
  result.failure = String(err && err.stack ? err.stack : err)
} finally {
  result.log = log
  if (context) await context.close().catch(() => {})
  rmSync(profile, { recursive: true, force: true })
}

console.log(JSON.stringify(result))
