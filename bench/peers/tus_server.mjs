// @tus/server with @tus/s3-store, the tus peer of the benchmark (python -m bench).
//
//   node tus_server.mjs            (configuration from the environment, see below)
//
// BENCH_PORT, BENCH_S3_ENDPOINT, BENCH_S3_REGION, BENCH_S3_BUCKET, BENCH_S3_ACCESS_KEY_ID,
// BENCH_S3_SECRET_ACCESS_KEY, BENCH_PART_SIZE (bytes; the same part size the gateway uses),
// BENCH_TUS_CHECKSUM (see below).
// Listens on 127.0.0.1 only; prints one line "listening <port>" once it accepts connections.
import http from 'node:http'

import { S3Store } from '@tus/s3-store'
import { Server } from '@tus/server'

const env = process.env
const datastore = new S3Store({
  partSize: Number(env.BENCH_PART_SIZE || 8 * 1024 * 1024),
  s3ClientConfig: {
    bucket: env.BENCH_S3_BUCKET,
    region: env.BENCH_S3_REGION || 'us-east-1',
    endpoint: env.BENCH_S3_ENDPOINT,
    forcePathStyle: true,
    credentials: { accessKeyId: env.BENCH_S3_ACCESS_KEY_ID, secretAccessKey: env.BENCH_S3_SECRET_ACCESS_KEY },
    // BENCH_TUS_CHECKSUM=when_required turns off the AWS SDK's default CRC32 of every PutObject/UploadPart
    // body (requestChecksumCalculation WHEN_SUPPORTED), to see what that integrity check costs.
    ...(env.BENCH_TUS_CHECKSUM === 'when_required' ? { requestChecksumCalculation: 'WHEN_REQUIRED' } : {}),
  },
})
const server = new Server({ path: '/files', datastore })
const httpServer = http.createServer((req, res) => server.handle(req, res))
// Node's default keep-alive timeout is 5 s; the load generator keeps its connections busy anyway.
httpServer.keepAliveTimeout = 30_000
httpServer.listen(Number(env.BENCH_PORT), '127.0.0.1', () => {
  process.stdout.write(`listening ${httpServer.address().port}\n`)
})
for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => process.exit(0))
