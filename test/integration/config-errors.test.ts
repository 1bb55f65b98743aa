import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLI_PATH, REPO_ROOT } from '../helpers/proxy-harness';

/**
 * `slotproxy start --config BAD.yaml` as a user meets it: the process exits non-zero before
 * listening, and its message names the file, the line and the YAML path of the mistake. Also a
 * resharding command whose proxy does not answer: one line, no stack trace.
 */

const FIXTURES = path.join(REPO_ROOT, 'test', 'fixtures');

interface Run {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs the CLI; a bad config must end it quickly, so a process still running after 10 s is killed. */
function runCli(args: readonly string[], cwd: string): Promise<Run> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI_PATH, ...args], { cwd, timeout: 10_000, killSignal: 'SIGKILL' }, (err, stdout, stderr) => {
      const code = err === null ? 0 : typeof err.code === 'number' ? err.code : null;
      resolve({ code, signal: err?.signal ?? null, stdout, stderr });
    });
  });
}

/** 1-based line of the `occurrence`-th line of `file` that contains `text`. */
function lineOf(file: string, text: string, occurrence = 1): number {
  const lines = fs.readFileSync(file, 'utf8').split('\n');
  let seen = 0;
  for (const [i, line] of lines.entries()) {
    if (line.includes(text) && ++seen === occurrence) return i + 1;
  }
  throw new Error(`${file} has no line ${occurrence} containing ${JSON.stringify(text)}`);
}

interface BadFixture {
  readonly file: string;
  /** Finds the offending line in the fixture, so the expectation follows edits to it. */
  readonly line: () => number;
  /** The YAML path the message must name (null: a syntax error, which has none). */
  readonly yamlPath: string | null;
  /** What the message must say about the mistake. */
  readonly detail: RegExp;
}

const BAD_FIXTURES: readonly BadFixture[] = [
  {
    file: 'bad-address.yaml',
    line: () => lineOf(path.join(FIXTURES, 'bad-address.yaml'), 'primary: "127.0.0.1"'),
    yamlPath: 'shards[1].primary',
    detail: /host:port/,
  },
  {
    file: 'bad-duplicate-address.yaml',
    line: () => lineOf(path.join(FIXTURES, 'bad-duplicate-address.yaml'), '127.0.0.1:7004', 2),
    yamlPath: 'shards[1].replicas[1]',
    detail: /127\.0\.0\.1:7004.*already used/,
  },
  {
    file: 'bad-duplicate-name.yaml',
    line: () => lineOf(path.join(FIXTURES, 'bad-duplicate-name.yaml'), 'name: s1', 2),
    yamlPath: 'shards[2].name',
    detail: /"s1".*already used/,
  },
  {
    file: 'bad-overlap.yaml',
    line: () => lineOf(path.join(FIXTURES, 'bad-overlap.yaml'), '"5000-5010"'),
    yamlPath: 'shards[1].slots[1]',
    detail: /slot 5000 .*both/,
  },
  {
    file: 'bad-syntax.yaml',
    line: () => lineOf(path.join(FIXTURES, 'bad-syntax.yaml'), '   replicas: []'),
    yamlPath: null,
    detail: /YAML syntax error/,
  },
  {
    file: 'bad-uncovered.yaml',
    line: () => lineOf(path.join(FIXTURES, 'bad-uncovered.yaml'), 'shards:'),
    yamlPath: 'shards',
    detail: /5461-5470.*not owned/,
  },
  {
    file: 'bad-unknown-key.yaml',
    line: () => lineOf(path.join(FIXTURES, 'bad-unknown-key.yaml'), 'conectionsPerNode'),
    yamlPath: 'conectionsPerNode',
    detail: /unknown key.*connectionsPerNode/,
  },
];

describe('slotproxy start with a bad config file', () => {
  let otherCwd: string;
  beforeAll(() => {
    otherCwd = fs.mkdtempSync(path.join(os.tmpdir(), 'slotproxy-cwd-'));
  });
  afterAll(() => {
    fs.rmSync(otherCwd, { recursive: true, force: true });
  });

  it('has a fixture for every case here, and a test for every bad-*.yaml fixture', () => {
    const onDisk = fs.readdirSync(FIXTURES).filter((name) => /^bad-.*\.yaml$/.test(name));
    expect(onDisk.sort()).toEqual(BAD_FIXTURES.map((f) => f.file).sort());
  });

  it.each(BAD_FIXTURES)('$file: exits non-zero naming the file, line and YAML path', async ({ file, line, yamlPath, detail }) => {
    const relative = path.join('test', 'fixtures', file);
    const run = await runCli(['start', '--config', relative], REPO_ROOT);
    expect(run.signal).toBeNull(); // it exited by itself, not by our 10 s kill
    expect(run.code).not.toBe(0);
    expect(run.code).not.toBeNull();
    const message = run.stderr.trim();
    // `file:line: path: detail`, as load-config formats it.
    const where = `${relative}:${line()}: `;
    expect(message).toContain(where);
    const after = message.slice(message.indexOf(where) + where.length);
    if (yamlPath !== null) expect(after.startsWith(`${yamlPath}: `)).toBe(true);
    expect(after).toMatch(detail);
    expect(message).not.toMatch(/"event":"listening"/);
  }, 15_000);

  it('names the file as given when started from another folder with an absolute path', async () => {
    const file = path.join(FIXTURES, 'bad-unknown-key.yaml');
    const run = await runCli(['start', '--config', file], otherCwd);
    expect(run.code).not.toBe(0);
    expect(run.stderr).toContain(`${file}:${lineOf(file, 'conectionsPerNode')}: conectionsPerNode: `);
  }, 15_000);

  it('exits non-zero naming a config file that does not exist', async () => {
    const file = path.join(otherCwd, 'missing.yaml');
    const run = await runCli(['start', '--config', file], otherCwd);
    expect(run.code).not.toBe(0);
    expect(run.code).not.toBeNull();
    expect(run.stderr).toContain(file);
  }, 15_000);

  it('exits non-zero with a usage message when --config is missing', async () => {
    const run = await runCli(['start'], otherCwd);
    expect(run.code).not.toBe(0);
    expect(run.code).not.toBeNull();
    expect(run.stderr).toMatch(/--config/);
  }, 15_000);

  it('tells a resharding command whose admin endpoint does not answer so on one line, with exit code 1', async () => {
    // A port just found free and closed again: nothing listens there.
    const port = await new Promise<number>((resolve) => {
      const server = net.createServer().listen(0, '127.0.0.1', () => {
        const { port: free } = server.address() as net.AddressInfo;
        server.close(() => resolve(free));
      });
    });
    const run = await runCli(['reshard', '--from', 's1', '--to', 's2', '--slots', '1', '--yes', '--proxy', `127.0.0.1:${port}`], otherCwd);
    expect(run.code).toBe(1);
    expect(run.stderr).toBe(`slotproxy reshard: cannot reach the proxy's admin endpoint at http://127.0.0.1:${port}: connect ECONNREFUSED 127.0.0.1:${port}\n`);
  }, 15_000);
});
