import { parentPort } from 'node:worker_threads';
import { log } from '../log/logger';
import { idleOwnThread } from '../runtime/thread-priority';
import { topologyFromJson } from '../topology/topology-codec';
import type { Topology } from '../topology/topology';
import type { FromMover, HostCall, ProgressFields, ToMover } from './slot-migrator';
import { MigrationAbortedError, MigrationProgress, SlotMover, type MoverHost } from './slot-mover';

/**
 * The slot mover's thread (see slot-migrator.ts): runs SlotMovers one after another (one per
 * 'start'), asking the main thread for every snapshot change and reporting progress; the
 * snapshots it reads arrive as messages. It lives as long as the proxy, idle between runs.
 */

/** How often progress goes to the main thread while the mover runs. */
const PROGRESS_EVERY_MS = 100;

const port = parentPort;
if (port === null) throw new Error('mover-thread.js runs as a worker thread');

// Background work on the data path's cores: see runtime/thread-priority.ts.
idleOwnThread();

let topology: Topology | null = null;
let mover: SlotMover | null = null;
let nextId = 1;
const calls = new Map<number, { resolve(): void; reject(err: Error): void }>();

function call(request: HostCall): Promise<void> {
  const id = nextId++;
  return new Promise((resolve, reject) => {
    calls.set(id, { resolve, reject });
    port!.postMessage({ type: 'call', id, call: request } satisfies FromMover);
  });
}

const host: MoverHost = {
  get topology(): Topology {
    return topology!;
  },
  change: (source, done, begun) => call({ method: 'change', source, done, begun }),
  setLock: (slot, key, isLocked) => call({ method: 'setLock', slot, key, isLocked }),
  setBigKeys: (entries) => call({ method: 'setBigKeys', entries }),
  onError: (kind) => port.postMessage({ type: 'error', kind } satisfies FromMover),
};

function fieldsOf(progress: MigrationProgress): ProgressFields {
  const { startedAt: _startedAt, ...fields } = progress;
  return fields;
}

port.on('message', (message: ToMover) => {
  switch (message.type) {
    case 'start': {
      // One run at a time: the main thread starts the next only after this one's 'end'.
      log.setLevel(message.logLevel);
      topology = topologyFromJson(message.topology);
      const progress = new MigrationProgress();
      const running = new SlotMover(host, message.options);
      mover = running;
      const timer = setInterval(() => port.postMessage({ type: 'progress', progress: fieldsOf(progress) } satisfies FromMover), PROGRESS_EVERY_MS);
      running.run(message.moves, progress).then(
        () => {
          clearInterval(timer);
          port.postMessage({ type: 'progress', progress: fieldsOf(progress) } satisfies FromMover);
          port.postMessage({ type: 'end', error: null, isAborted: false } satisfies FromMover);
        },
        (err: unknown) => {
          clearInterval(timer);
          port.postMessage({ type: 'progress', progress: fieldsOf(progress) } satisfies FromMover);
          port.postMessage({
            type: 'end',
            error: (err as Error).message ?? String(err),
            isAborted: err instanceof MigrationAbortedError,
          } satisfies FromMover);
        },
      );
      return;
    }
    case 'topology':
      topology = topologyFromJson(message.topology);
      mover?.onTopology();
      return;
    case 'reply': {
      const pending = calls.get(message.id);
      calls.delete(message.id);
      if (message.error === null) pending?.resolve();
      else pending?.reject(new Error(message.error));
      return;
    }
    case 'abort':
      mover?.abort();
      return;
  }
});
