import * as path from 'node:path';

import { describe, expect, it } from 'vitest';

import { AddressError, addressKey, formatAddress, parseAddress } from '../../src/config/address';
import {
  ConfigError,
  DEFAULT_SETTINGS,
  evenSlotRanges,
  loadConfig,
  loadConfigFile,
} from '../../src/config/load-config';

const FIXTURES = path.join(__dirname, '..', 'fixtures');
const fixture = (name: string): string => path.join(FIXTURES, name);

/** Runs `load` and returns the ConfigError it throws; fails the test if it throws nothing else. */
function configError(load: () => unknown): ConfigError {
  try {
    load();
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return err as ConfigError;
  }
  throw new Error('expected a ConfigError, but the config loaded');
}

/** Loads inline YAML as `inline.yaml`; the text is trimmed of the template's leading newline. */
function load(yamlText: string) {
  return loadConfig(yamlText.replace(/^\n/, ''), 'inline.yaml', '/etc/slotproxy');
}

/** Asserts the error names file, line and path in the `file:line: path: detail` form. */
function expectAt(err: ConfigError, file: string, line: number | null, yamlPath: string, detail: string | RegExp): void {
  expect(err.name).toBe('ConfigError');
  expect(err.line).toBe(line);
  expect(err.path).toBe(yamlPath);
  const where = line === null ? file : `${file}:${line}`;
  expect(err.message.startsWith(yamlPath === '' ? `${where}: ` : `${where}: ${yamlPath}: `)).toBe(true);
  if (typeof detail === 'string') expect(err.detail).toContain(detail);
  else expect(err.detail).toMatch(detail);
}

const TWO_SHARDS = `
shards:
  - name: s1
    primary: 127.0.0.1:7001
  - name: s2
    primary: 127.0.0.1:7002
`;

describe('parseAddress / formatAddress / addressKey', () => {
  it.each([
    ['127.0.0.1:7001', { host: '127.0.0.1', port: 7001 }],
    ['localhost:1', { host: 'localhost', port: 1 }],
    ['redis_1.example-net:65535', { host: 'redis_1.example-net', port: 65535 }],
    ['[::1]:7001', { host: '::1', port: 7001 }],
    ['[2001:db8::42]:7379', { host: '2001:db8::42', port: 7379 }],
  ])('parses %s', (text, address) => {
    expect(parseAddress(text)).toEqual(address);
    expect(formatAddress(parseAddress(text))).toBe(text);
    expect(addressKey(parseAddress(text))).toBe(text);
  });

  it.each([
    ['127.0.0.1', 'is not host:port'],
    [':7001', 'has no host'],
    ['127.0.0.1:', 'not a port number'],
    ['127.0.0.1:0', 'port 0, which is not in 1..65535'],
    ['127.0.0.1:65536', 'port 65536, which is not in 1..65535'],
    ['127.0.0.1:70a', 'not a port number'],
    ['::1:7001', 'write IPv6 hosts in brackets'],
    ['[::1:7001', 'without a closing "]"'],
    ['[::1]7001', 'is not [ipv6]:port'],
    ['[localhost]:7001', 'not an IPv6 address'],
    ['999.1.1.1:7001', 'not a hostname or IP address'],
    ['redis://h:7001', 'write IPv6 hosts in brackets'],
    ['my host:7001', 'not a hostname or IP address'],
  ])('rejects %s', (text, reason) => {
    let caught: unknown;
    try {
      parseAddress(text);
    } catch (err) {
      caught = err;
    }
    expect(caught).toBeInstanceOf(AddressError);
    expect((caught as AddressError).name).toBe('AddressError');
    expect((caught as AddressError).message.startsWith(`${JSON.stringify(text)} `)).toBe(true);
    expect((caught as AddressError).message).toContain(reason);
  });

  it('formats IPv6 hosts in brackets so the key of equal addresses is equal', () => {
    expect(formatAddress({ host: '::1', port: 7001 })).toBe('[::1]:7001');
    expect(addressKey({ host: '127.0.0.1', port: 7001 })).toBe(addressKey(parseAddress('127.0.0.1:07001')));
  });
});

describe('evenSlotRanges', () => {
  it('matches redis-cli --cluster create', () => {
    expect(evenSlotRanges(1)).toEqual([[[0, 16383]]]);
    expect(evenSlotRanges(2)).toEqual([[[0, 8191]], [[8192, 16383]]]);
    expect(evenSlotRanges(3)).toEqual([[[0, 5460]], [[5461, 10922]], [[10923, 16383]]]);
    expect(evenSlotRanges(6)).toEqual([
      [[0, 2730]],
      [[2731, 5460]],
      [[5461, 8191]],
      [[8192, 10922]],
      [[10923, 13652]],
      [[13653, 16383]],
    ]);
  });

  it('always partitions 0..16383 into non-empty ranges in shard order', () => {
    // Includes counts where redis-cli's float cursor drifts (7542 and up).
    for (const n of [4, 5, 7, 10, 100, 1000, 1001, 7542, 9999, 16383, 16384]) {
      const ranges = evenSlotRanges(n);
      expect(ranges).toHaveLength(n);
      let next = 0;
      for (const shard of ranges) {
        expect(shard).toHaveLength(1);
        const [from, to] = shard[0] ?? [-1, -1];
        expect(from).toBe(next);
        expect(to).toBeGreaterThanOrEqual(from);
        next = to + 1;
      }
      expect(next).toBe(16384);
    }
  });

  it('rejects impossible counts', () => {
    expect(() => evenSlotRanges(0)).toThrow(RangeError);
    expect(() => evenSlotRanges(16385)).toThrow(RangeError);
    expect(() => evenSlotRanges(1.5)).toThrow(RangeError);
  });
});

describe('loadConfig: valid configs', () => {
  it('loads a full config with explicit slots and IPv6 addresses', () => {
    const config = loadConfigFile(fixture('valid.yaml'));
    expect(config).toEqual({
      listen: { host: '0.0.0.0', port: 7100 },
      metrics: { host: '::1', port: 9121 },
      admin: null,
      watchConfig: false,
      migrateBatchKeys: 50,
      migrateSlotsInFlight: 192,
      migrateKeysPerSecond: 12000,
      configFile: fixture('valid.yaml'),
      nodeTimeoutMs: 3000,
      stateFile: path.join(FIXTURES, 'state', 'topology.json'),
      connectionsPerNode: 4,
      connectTimeoutMs: 500,
      commandTimeoutMs: 2000,
      failoverWaitMs: 0,
      readFrom: 'preferReplica',
      minReplicaAcks: 0,
      replicaAckTimeoutMs: 1000,
      noReplicaWrites: 'refuse',
      migrateTimeoutMs: 2000,
      keyMoveWaitMs: 30000,
      workers: 2,
      // Kept as written: YAML alone would read 0123 as the number 123.
      backendPassword: '0123',
      logLevel: 'debug',
      shards: [
        {
          name: 'alpha',
          primary: { host: '127.0.0.1', port: 7001 },
          replicas: [
            { host: '::1', port: 7101 },
            { host: 'fe80::1', port: 7102 },
          ],
          // Sorted and merged: 0, 1-100, 101-8191 and 8192-16383 touch.
          slots: [[0, 16383]],
        },
        { name: 'beta', primary: { host: 'redis-b.internal', port: 7002 }, replicas: [], slots: [] },
      ],
    });
  });

  it('applies every default and splits slots evenly when no shard lists them', () => {
    const config = loadConfigFile(fixture('valid-even.yaml'));
    const { shards, configFile, ...settings } = config;
    expect(configFile).toBe(fixture('valid-even.yaml'));
    expect(settings).toEqual(DEFAULT_SETTINGS);
    expect(settings).toEqual({
      listen: { host: '127.0.0.1', port: 7000 },
      metrics: null,
      admin: null,
      watchConfig: false,
      migrateBatchKeys: 50,
      migrateSlotsInFlight: 192,
      migrateKeysPerSecond: 12000,
      nodeTimeoutMs: 5000,
      stateFile: null,
      connectionsPerNode: 1,
      connectTimeoutMs: 1000,
      commandTimeoutMs: 0,
      failoverWaitMs: 5000,
      readFrom: 'primary',
      minReplicaAcks: 0,
      replicaAckTimeoutMs: 1000,
      noReplicaWrites: 'refuse',
      migrateTimeoutMs: 2000,
      keyMoveWaitMs: 30000,
      workers: 1,
      backendPassword: null,
      logLevel: 'info',
    });
    expect(shards.map((s) => [s.name, s.replicas, s.slots])).toEqual([
      ['s1', [], [[0, 5460]]],
      ['s2', [], [[5461, 10922]]],
      ['s3', [], [[10923, 16383]]],
    ]);
  });

  it('loads the documented example topology', () => {
    const file = path.join(__dirname, '..', '..', 'config', 'slotproxy.example.yaml');
    const config = loadConfigFile(file);
    expect(config.listen).toEqual({ host: '127.0.0.1', port: 7000 });
    expect(config.metrics).toEqual({ host: '127.0.0.1', port: 9121 });
    expect(config.stateFile).toBe(path.join(path.dirname(file), 'slotproxy.state.json'));
    expect(config.shards.map((s) => [s.name, formatAddress(s.primary), s.replicas.map(formatAddress), s.slots])).toEqual([
      ['s1', '127.0.0.1:7001', ['127.0.0.1:7004'], [[0, 5460]]],
      ['s2', '127.0.0.1:7002', ['127.0.0.1:7005'], [[5461, 10922]]],
      ['s3', '127.0.0.1:7003', ['127.0.0.1:7006'], [[10923, 16383]]],
    ]);
    // The example spells out the even split, so leaving slots out must give the same layout.
    expect(config.shards.map((s) => s.slots)).toEqual(evenSlotRanges(3));
  });

  it('resolves stateFile against baseDir and keeps absolute paths', () => {
    expect(load(`stateFile: run/state.json\n${TWO_SHARDS}`).stateFile).toBe(path.resolve('/etc/slotproxy', 'run/state.json'));
    expect(load(`stateFile: /var/lib/slotproxy.json\n${TWO_SHARDS}`).stateFile).toBe(path.resolve('/var/lib/slotproxy.json'));
  });

  it('treats null, ~ and empty values as "off" for nullable settings', () => {
    const config = load(`metrics: ~\nstateFile:\nbackendPassword: null\n${TWO_SHARDS}`);
    expect([config.metrics, config.stateFile, config.backendPassword]).toEqual([null, null, null]);
  });

  it('accepts integer slots, single slots and merges adjacent ranges', () => {
    const config = load(`
shards:
  - name: s1
    primary: 127.0.0.1:7001
    slots: [0, "1", " 2 - 99 ", 200, "100-199"]
  - name: s2
    primary: 127.0.0.1:7002
    slots: ["201-300", "16000-16383", "301-15999"]
`);
    expect(config.shards.map((s) => s.slots)).toEqual([[[0, 200]], [[201, 16383]]]);
  });

  it('follows YAML anchors and aliases', () => {
    const config = load(`
shards:
  - name: s1
    primary: 127.0.0.1:7001
    slots: &all ["0-16383"]
`);
    expect(config.shards[0]?.slots).toEqual([[0, 16383]]);
  });
});

describe('loadConfigFile: one fixture per validation error', () => {
  it('reports YAML syntax errors with their line', () => {
    const err = configError(() => loadConfigFile(fixture('bad-syntax.yaml')));
    expectAt(err, fixture('bad-syntax.yaml'), 5, '', 'YAML syntax error');
  });

  it('rejects an unknown top-level key and suggests the right one', () => {
    const err = configError(() => loadConfigFile(fixture('bad-unknown-key.yaml')));
    expectAt(err, fixture('bad-unknown-key.yaml'), 3, 'conectionsPerNode', 'unknown key (did you mean "connectionsPerNode"?)');
  });

  it('rejects an address without a port', () => {
    const err = configError(() => loadConfigFile(fixture('bad-address.yaml')));
    expectAt(err, fixture('bad-address.yaml'), 7, 'shards[1].primary', '"127.0.0.1" is not host:port');
    expect(err.message).toBe(`${fixture('bad-address.yaml')}:7: shards[1].primary: "127.0.0.1" is not host:port`);
    expect(String(err)).toBe(`ConfigError: ${err.message}`);
  });

  it('rejects a duplicate shard name at its second use', () => {
    const err = configError(() => loadConfigFile(fixture('bad-duplicate-name.yaml')));
    expectAt(err, fixture('bad-duplicate-name.yaml'), 6, 'shards[2].name', 'shard name "s1" is already used by shards[0]');
  });

  it('rejects an address used twice, naming both places', () => {
    const err = configError(() => loadConfigFile(fixture('bad-duplicate-address.yaml')));
    expectAt(
      err,
      fixture('bad-duplicate-address.yaml'),
      10,
      'shards[1].replicas[1]',
      '127.0.0.1:7004 is already used by shards[0].replicas[0] (s1)',
    );
  });

  it('rejects overlapping slots, naming the first overlapping slot and both shards', () => {
    const err = configError(() => loadConfigFile(fixture('bad-overlap.yaml')));
    expectAt(err, fixture('bad-overlap.yaml'), 9, 'shards[1].slots[1]', 'slot 5000 is owned by both s1 and s2 (also in shards[0].slots[0])');
  });

  it('rejects slots owned by no shard, naming the first uncovered range', () => {
    const err = configError(() => loadConfigFile(fixture('bad-uncovered.yaml')));
    expectAt(err, fixture('bad-uncovered.yaml'), 1, 'shards', 'slots 5461-5470 are not owned by any shard');
  });

  it('reports an unreadable file without a line', () => {
    const missing = fixture('does-not-exist.yaml');
    const err = configError(() => loadConfigFile(missing));
    expectAt(err, missing, null, '', 'cannot read the file');
  });
});

describe('loadConfig: validation errors (inline)', () => {
  const cases: readonly {
    readonly title: string;
    readonly yaml: string;
    readonly line: number | null;
    readonly path: string;
    readonly detail: string | RegExp;
  }[] = [
    { title: 'an empty file', yaml: '', line: null, path: '', detail: 'the file is empty' },
    { title: 'a document that is not a mapping', yaml: '- a\n- b\n', line: 1, path: '', detail: 'must be a mapping of settings, not a list' },
    { title: 'a missing shards key', yaml: 'listen: 127.0.0.1:7000\n', line: 1, path: '', detail: '"shards" is required' },
    { title: 'an empty shards list', yaml: 'shards: []\n', line: 1, path: 'shards', detail: 'must list at least one shard' },
    { title: 'shards that is not a list', yaml: 'shards:\n  s1: 127.0.0.1:7001\n', line: 1, path: 'shards', detail: 'must be a list of shards, not a mapping' },
    { title: 'a shard that is not a mapping', yaml: 'shards:\n  - 127.0.0.1:7001\n', line: 2, path: 'shards[0]', detail: 'must be a shard mapping' },
    {
      title: 'an unknown shard key',
      yaml: 'shards:\n  - name: s1\n    primary: 127.0.0.1:7001\n    replica: [127.0.0.1:7002]\n',
      line: 4,
      path: 'shards[0].replica',
      detail: 'unknown key (did you mean "replicas"?)',
    },
    { title: 'a shard without a primary', yaml: 'shards:\n  - name: s1\n', line: 2, path: 'shards[0].primary', detail: 'is required' },
    { title: 'a shard without a name', yaml: 'shards:\n  - primary: 127.0.0.1:7001\n', line: 2, path: 'shards[0].name', detail: 'is required' },
    { title: 'an empty shard name', yaml: 'shards:\n  - name: ""\n    primary: 127.0.0.1:7001\n', line: 2, path: 'shards[0].name', detail: 'must be a non-empty string' },
    {
      title: 'a port out of range',
      yaml: 'shards:\n  - name: s1\n    primary: 127.0.0.1:7001\n    replicas:\n      - 127.0.0.1:70000\n',
      line: 5,
      path: 'shards[0].replicas[0]',
      detail: 'port 70000, which is not in 1..65535',
    },
    {
      title: 'an IPv6 address without brackets',
      yaml: 'listen: "::1:7000"\nshards:\n  - name: s1\n    primary: 127.0.0.1:7001\n',
      line: 1,
      path: 'listen',
      detail: 'write IPv6 hosts in brackets',
    },
    {
      title: 'an unquoted bracketed IPv6 address (a YAML flow list)',
      yaml: 'shards:\n  - name: s1\n    primary: [::1]:7001\n',
      line: 3,
      path: '',
      detail: 'quote IPv6 addresses',
    },
    { title: 'a number where an address belongs', yaml: 'metrics: 9121\n' + TWO_SHARDS.slice(1), line: 1, path: 'metrics', detail: '"9121" is not host:port' },
    { title: 'metrics on the listen address', yaml: 'listen: 127.0.0.1:7100\nmetrics: 127.0.0.1:7100\n' + TWO_SHARDS.slice(1), line: 2, path: 'metrics', detail: '127.0.0.1:7100 is already used by listen' },
    {
      title: 'a shard on the default listen address',
      yaml: 'shards:\n  - name: s1\n    primary: 127.0.0.1:7000\n',
      line: 3,
      path: 'shards[0].primary',
      detail: '127.0.0.1:7000 is already used by listen (the default)',
    },
    { title: 'connectionsPerNode of 0', yaml: 'connectionsPerNode: 0\n' + TWO_SHARDS.slice(1), line: 1, path: 'connectionsPerNode', detail: 'must be a whole number in 1..64, not 0' },
    { title: 'workers above 64', yaml: 'workers: 65\n' + TWO_SHARDS.slice(1), line: 1, path: 'workers', detail: 'must be a whole number in 1..64, not 65' },
    { title: 'a fractional timeout', yaml: 'nodeTimeoutMs: 1.5\n' + TWO_SHARDS.slice(1), line: 1, path: 'nodeTimeoutMs', detail: 'not 1.5' },
    { title: 'a quoted number', yaml: 'connectTimeoutMs: "1000"\n' + TWO_SHARDS.slice(1), line: 1, path: 'connectTimeoutMs', detail: 'not "1000"' },
    { title: 'a negative timeout', yaml: 'commandTimeoutMs: -1\n' + TWO_SHARDS.slice(1), line: 1, path: 'commandTimeoutMs', detail: 'in 0..2147483647, not -1' },
    { title: 'a timeout beyond setTimeout', yaml: 'failoverWaitMs: 2147483648\n' + TWO_SHARDS.slice(1), line: 1, path: 'failoverWaitMs', detail: 'in 0..2147483647' },
    { title: 'an empty required setting', yaml: 'listen:\n' + TWO_SHARDS.slice(1), line: 1, path: 'listen', detail: 'must be host:port, not an empty value' },
    { title: 'an unknown readFrom', yaml: 'readFrom: replicas\n' + TWO_SHARDS.slice(1), line: 1, path: 'readFrom', detail: 'must be one of primary, preferReplica, replica, not "replicas"' },
    { title: 'an unknown logLevel', yaml: 'logLevel: verbose\n' + TWO_SHARDS.slice(1), line: 1, path: 'logLevel', detail: 'must be one of debug, info, warn, error' },
    { title: 'a backendPassword that is a list', yaml: 'backendPassword: [a]\n' + TWO_SHARDS.slice(1), line: 1, path: 'backendPassword', detail: /^must be a non-empty string$/ },
    { title: 'an empty stateFile string', yaml: 'stateFile: ""\n' + TWO_SHARDS.slice(1), line: 1, path: 'stateFile', detail: 'must be a non-empty string' },
    { title: 'a duplicate key', yaml: 'workers: 1\nworkers: 2\n' + TWO_SHARDS.slice(1), line: 2, path: '', detail: 'Map keys must be unique' },
    { title: 'two YAML documents', yaml: 'workers: 1\n---\n' + TWO_SHARDS.slice(1), line: 2, path: '', detail: 'one YAML document' },
    {
      title: 'slots on some shards only',
      yaml: 'shards:\n  - name: s1\n    primary: 127.0.0.1:7001\n    slots: ["0-16383"]\n  - name: s2\n    primary: 127.0.0.1:7002\n',
      line: 5,
      path: 'shards[1].slots',
      detail: 'is missing, but shards[0] (s1) lists slots; give slots for every shard or for none',
    },
    {
      title: 'a slot above 16383',
      yaml: 'shards:\n  - name: s1\n    primary: 127.0.0.1:7001\n    slots:\n      - "0-16384"\n',
      line: 5,
      path: 'shards[0].slots[0]',
      detail: 'slot 16384 is out of range 0..16383',
    },
    {
      title: 'an integer slot above 16383',
      yaml: 'shards:\n  - name: s1\n    primary: 127.0.0.1:7001\n    slots: ["0-16383", 20000]\n',
      line: 4,
      path: 'shards[0].slots[1]',
      detail: 'slot 20000 is out of range 0..16383',
    },
    {
      title: 'a negative slot',
      yaml: 'shards:\n  - name: s1\n    primary: 127.0.0.1:7001\n    slots:\n      - -1\n',
      line: 5,
      path: 'shards[0].slots[0]',
      detail: 'slot -1 is out of range 0..16383',
    },
    {
      title: 'a fractional slot',
      yaml: 'shards:\n  - name: s1\n    primary: 127.0.0.1:7001\n    slots:\n      - 1.5\n',
      line: 5,
      path: 'shards[0].slots[0]',
      detail: '1.5 is not a whole slot number',
    },
    {
      title: 'a malformed range',
      yaml: 'shards:\n  - name: s1\n    primary: 127.0.0.1:7001\n    slots:\n      - "0-"\n',
      line: 5,
      path: 'shards[0].slots[0]',
      detail: '"0-" is not a slot or slot range like "0-5460"',
    },
    {
      title: 'a backwards range',
      yaml: 'shards:\n  - name: s1\n    primary: 127.0.0.1:7001\n    slots:\n      - 100-5\n',
      line: 5,
      path: 'shards[0].slots[0]',
      detail: 'range 100-5 ends before it starts',
    },
    {
      title: 'a slot listed twice within one shard',
      yaml: 'shards:\n  - name: s1\n    primary: 127.0.0.1:7001\n    slots:\n      - "0-16383"\n      - 42\n',
      line: 6,
      path: 'shards[0].slots[1]',
      detail: 'slot 42 is listed twice for s1 (also in shards[0].slots[0])',
    },
    {
      title: 'an overlap where the later shard holds the lower range',
      yaml: 'shards:\n  - name: s1\n    primary: 127.0.0.1:7001\n    slots: ["100-16383"]\n  - name: s2\n    primary: 127.0.0.1:7002\n    slots: ["0-100"]\n',
      line: 7,
      path: 'shards[1].slots[0]',
      detail: 'slot 100 is owned by both s1 and s2',
    },
    {
      title: 'a single uncovered slot at the end',
      yaml: 'shards:\n  - name: s1\n    primary: 127.0.0.1:7001\n    slots: ["0-16382"]\n',
      line: 1,
      path: 'shards',
      detail: /^slot 16383 is not owned by any shard$/,
    },
  ];

  it.each(cases)('rejects $title', ({ yaml, line, path: yamlPath, detail }) => {
    expectAt(configError(() => load(yaml)), 'inline.yaml', line, yamlPath, detail);
  });
});
