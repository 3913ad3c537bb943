// Uppy Companion (its S3 multipart signing endpoints), the signing peer of the benchmark.
//
//   node companion_server.mjs      (configuration from the environment, see tus_server.mjs;
//                                   BENCH_FILE_PATH is a writable scratch directory companion insists on)
//
// Companion is mounted as an Express app, the documented way to embed it; only its /s3 routes are used:
// POST /s3/multipart (CreateMultipartUpload) and GET /s3/multipart/:uploadId/batch?key=&partNumbers=1,2,...
import express from 'express'
import * as companion from '@uppy/companion'

const env = process.env
const port = Number(env.BENCH_PORT)
const { app: companionApp } = companion.app({
  s3: {
    key: env.BENCH_S3_ACCESS_KEY_ID,
    secret: env.BENCH_S3_SECRET_ACCESS_KEY,
    bucket: env.BENCH_S3_BUCKET,
    endpoint: env.BENCH_S3_ENDPOINT,
    region: env.BENCH_S3_REGION || 'us-east-1',
    forcePathStyle: true,
    expires: 900, // the gateway's presign TTL
    // Companion 6.2.2 bundles @aws-sdk/client-s3 3.986, whose default (WHEN_SUPPORTED) signs
    // x-amz-checksum-crc32 of the empty `Body: ''` into every part URL (AAAAAA==); SeaweedFS, like
    // MinIO and R2, then refuses any real part with 400 BadDigest. WHEN_REQUIRED gives usable URLs.
    // BENCH_COMPANION_CHECKSUM=default keeps the SDK default (to show the failure).
    ...(env.BENCH_COMPANION_CHECKSUM === 'default'
      ? {}
      : { awsClientOptions: { requestChecksumCalculation: 'WHEN_REQUIRED' } }),
  },
  server: { host: `127.0.0.1:${port}`, protocol: 'http' },
  filePath: env.BENCH_FILE_PATH,
  secret: 'bench-companion-secret',
  uploadUrls: ['http://127.0.0.1'],
  corsOrigins: true,
})
const app = express()
app.use(express.json())
app.use(companionApp)
const httpServer = app.listen(port, '127.0.0.1', () => {
  process.stdout.write(`listening ${httpServer.address().port}\n`)
})
httpServer.keepAliveTimeout = 30_000
for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => process.exit(0))
