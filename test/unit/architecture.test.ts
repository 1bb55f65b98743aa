import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative, dirname, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';

/** Which top-level src/ folders each folder may import (docs/architecture.md, module map). */
const ALLOWED: Readonly<Record<string, readonly string[]>> = {
  resp: [],
  commands: [],
  topology: [],
  config: [],
  io: [],
  log: [],
  runtime: [],
  metrics: ['runtime'],
  routing: ['commands', 'topology', 'resp', 'io'],
  reply: ['resp', 'io', 'backend', 'commands', 'metrics'],
  backend: ['resp', 'topology', 'io', 'metrics', 'log'],
  dispatch: ['routing', 'backend', 'reply', 'commands', 'resp', 'topology', 'metrics', 'io', 'log'],
  client: ['dispatch', 'reply', 'resp', 'io', 'metrics', 'log', 'commands'],
  // routing/ for its pure key -> slot function (the slot mover scans keys) and resp/ for reply
  // framing (the mover's lean connections), never the data path's sockets.
  control: ['topology', 'config', 'metrics', 'log', 'routing', 'resp', 'runtime'],
  cli: ['*'],
};

const SRC = resolve(__dirname, '..', '..', 'src');

function sourceFiles(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) return sourceFiles(path);
    return path.endsWith('.ts') ? [path] : [];
  });
}

function folderOf(file: string): string {
  const rel = relative(SRC, file);
  return rel.includes('/') ? rel.slice(0, rel.indexOf('/')) : 'cli';
}

describe('module dependencies follow the data path', () => {
  const files = sourceFiles(SRC);
  it.each(files.map((f) => [relative(SRC, f), f]))('%s imports only what its folder may', (_name, file) => {
    const from = folderOf(file);
    const allowed = ALLOWED[from];
    expect(allowed, `folder ${from} is not in the module map`).toBeDefined();
    const text = readFileSync(file, 'utf8');
    for (const match of text.matchAll(/from '(\.[^']+)'|import\('(\.[^']+)'\)/g)) {
      const spec = match[1] ?? match[2]!;
      const target = folderOf(resolve(dirname(file), spec));
      if (target === from || allowed!.includes('*')) continue;
      expect(target, `${relative(SRC, file)} imports ${spec}`).not.toBe('cli');
      expect(allowed, `${relative(SRC, file)} imports ${spec} (${from} -> ${target})`).toContain(target);
    }
  });
});
