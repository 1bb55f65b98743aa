import * as fs from 'node:fs';
import Redis from 'ioredis';
import { stringify } from 'yaml';
import { describe, expect, it } from 'vitest';
import { HOST, initialValue, keyName, loadKeys, ownerFromStateFile, useMigrationDeployment } from './migration-harness';

/**
 * A YAML that lists each shard's `slots:` is the slot table of a proxy started without its
 * state file, so after every plan the proxy writes its ownership back into those lists (and
 * leaves the rest of the file, comments included, as it was). Checked the way it matters: the
 * state file removed and the proxy restarted from the YAML alone finds every key.
 */

const KEYS = 20_000;

describe('a YAML that lists slots', () => {
  const deployment = useMigrationDeployment({ shards: 4, proxyShards: 3 });

  it('gets its slot lists rewritten after a reshard and an added shard, and a restart from it alone finds every key', async () => {
    const { shards, proxy, specs } = deployment;
    await loadKeys(shards.primaries.slice(0, 3), KEYS);
    // The operator's own YAML: slots listed, a comment of theirs.
    proxy.kill('SIGTERM');
    await proxy.exited();
    const yaml = (fs.readFileSync(proxy.configPath, 'utf8') as string).replace(/^shards:[\s\S]*$/m, '');
    const shardList = specs.slice(0, 3).map((s, i) => ({
      name: s.name,
      primary: `${s.node.host}:${s.node.port}`,
      slots: [['0-5460'], ['5461-10922'], ['10923-16383']][i],
    }));
    fs.writeFileSync(proxy.configPath, `# our cache tier, owned by team storage\n${yaml}${stringify({ shards: shardList })}`);
    fs.rmSync(proxy.stateFile);
    await proxy.restart();

    const submitted = await proxy.submit({ op: 'reshard', from: 's1', to: 's2', slots: 1_000 });
    expect(submitted.status, JSON.stringify(submitted.body)).toBe(202);
    expect((await proxy.waitForPlan(60_000)).state).toBe('done');
    let text = fs.readFileSync(proxy.configPath, 'utf8');
    expect(text).toContain('# our cache tier, owned by team storage');
    expect(slotLists(text)).toEqual({ s1: ['0-4460'], s2: ['4461-10922'], s3: ['10923-16383'] });

    const added = await proxy.submit({ op: 'add-shard', name: 's4', primary: `${specs[3]!.node.host}:${specs[3]!.node.port}` });
    expect(added.status, JSON.stringify(added.body)).toBe(202);
    expect((await proxy.waitForPlan(60_000, (s) => s.plan?.op === 'add-shard')).state).toBe('done');
    text = fs.readFileSync(proxy.configPath, 'utf8');
    expect(text).toContain('# our cache tier, owned by team storage');
    // The YAML's lists are the state file's ownership, s4 included.
    const { owner } = ownerFromStateFile(proxy.stateFile);
    expect(slotLists(text)).toEqual(rangesByShard(owner));
    expect(Object.keys(slotLists(text))).toEqual(['s1', 's2', 's3', 's4']);

    // Restarted from the YAML alone: the slot table it holds is where the keys are.
    proxy.kill('SIGTERM');
    await proxy.exited();
    fs.rmSync(proxy.stateFile);
    await proxy.restart();
    expect(proxy.logs()).toMatch(/"event":"topology loaded"[^\n]*"source":"config"/);
    const client = new Redis({ host: HOST, port: proxy.port, maxRetriesPerRequest: 0 });
    try {
      for (let start = 0; start < KEYS; start += 2_000) {
        const names = Array.from({ length: 2_000 }, (_, i) => keyName(start + i));
        const values = await client.mget(...names);
        expect(names.filter((name, i) => values[i] !== initialValue(start + i)).slice(0, 5)).toEqual([]);
      }
    } finally {
      client.disconnect();
    }
  }, 180_000);
});

/** `slots:` of each shard in the YAML text, by name (flow lists of "a-b" strings). */
function slotLists(text: string): Record<string, string[]> {
  const lists: Record<string, string[]> = {};
  let name = '';
  for (const line of text.split('\n')) {
    const named = /^\s*-?\s*name:\s*(\S+)/.exec(line);
    if (named !== null) name = named[1]!;
    const slots = /^\s*slots:\s*\[(.*)\]/.exec(line);
    if (slots !== null) lists[name] = slots[1]!.split(',').map((s) => s.trim().replace(/^"|"$/g, '')).filter((s) => s !== '');
  }
  return lists;
}

/** The owner table as each shard's inclusive ranges, "a-b" (or "a" for one slot). */
function rangesByShard(owner: readonly string[]): Record<string, string[]> {
  const ranges: Record<string, string[]> = {};
  let from = 0;
  for (let slot = 1; slot <= owner.length; slot++) {
    if (slot < owner.length && owner[slot] === owner[from]) continue;
    (ranges[owner[from]!] ??= []).push(from === slot - 1 ? String(from) : `${from}-${slot - 1}`);
    from = slot;
  }
  return Object.fromEntries(['s1', 's2', 's3', 's4'].filter((n) => n in ranges).map((n) => [n, ranges[n]!]));
}
