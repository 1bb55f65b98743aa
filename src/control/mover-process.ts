import { log } from '../log/logger';
import { idleThisProcess } from '../runtime/background-process';
import { topologyFromJson } from '../topology/topology-codec';
import type { Topology } from '../topology/topology';
import { movesOf, workOutPlan } from './plan-view';
import { PlanError } from './rebalance-planner';
import type { FromMover, HostCall, ProgressFields, ToMover } from './slot-migrator';
import { MigrationAbortedError, MigrationProgress, SlotMover, type MoverHost } from './slot-mover';

/**
 * The slot mover's process (see slot-migrator.ts): runs SlotMovers one after another (one per
 * 'start'), asking the proxy for every snapshot change and reporting progress; the snapshots it
 * reads arrive as messages. It also works out plans ('plan'), at any time. It lives as long as
 * the proxy, idle between runs.
 */

/** How often progress goes to the proxy while the mover runs. */
const PROGRESS_EVERY_MS = 100;

if (process.send === undefined) throw new Error('mover-process.js runs as a child process of the proxy');

// Background work on the data path's cores: see runtime/background-process.ts. A mover that
// replaces one found starved runs at the proxy's priority (slot-migrator.ts, STARVED_WAIT_SHARE).
idleThisProcess();
// Without its proxy a mover must stop at once: a batch it went on with could RESTORE an old copy
// over a key the next proxy has moved and written since (setpriv's death signal does the same).
process.on('disconnect', () => process.exit(0));
// The proxy ends this process when it closes, after stopping the run; a signal meant for the
// proxy's process group (Ctrl-C in a terminal) must not end a run under the proxy's feet.
for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(signal, () => undefined);

let topology: Topology | null = null;
let mover: SlotMover | null = null;
let nextId = 1;
const calls = new Map<number, { resolve(): void; reject(err: Error): void }>();

function tell(message: FromMover): void {
  process.send!(message);
}

function call(request: HostCall): Promise<void> {
  const id = nextId++;
  return new Promise((resolve, reject) => {
    calls.set(id, { resolve, reject });
    tell({ type: 'call', id, call: request } satisfies FromMover);
  });
}

const host: MoverHost = {
  get topology(): Topology {
    return topology!;
  },
  change: (source, done, begun) => call({ method: 'change', source, done, begun }),
  setLock: (slot, key, isLocked) => call({ method: 'setLock', slot, key, isLocked }),
  setBigKeys: (entries) => call({ method: 'setBigKeys', entries }),
  setNotifyFlags: (node, flags) => call({ method: 'setNotifyFlags', node, flags }),
  onError: (kind) => tell({ type: 'error', kind } satisfies FromMover),
};

function fieldsOf(progress: MigrationProgress): ProgressFields {
  const { startedAt: _startedAt, ...fields } = progress;
  return fields;
}

process.on('message', (message: ToMover) => {
  switch (message.type) {
    case 'start': {
      // One run at a time: the proxy starts the next only after this one's 'end'.
      log.setLevel(message.logLevel);
      topology = topologyFromJson(message.topology);
      const progress = new MigrationProgress();
      const running = new SlotMover(host, message.options);
      mover = running;
      const timer = setInterval(() => tell({ type: 'progress', progress: fieldsOf(progress) } satisfies FromMover), PROGRESS_EVERY_MS);
      running.run(movesOf(message.moves), progress).then(
        () => {
          clearInterval(timer);
          tell({ type: 'progress', progress: fieldsOf(progress) } satisfies FromMover);
          tell({ type: 'end', error: null, isAborted: false } satisfies FromMover);
        },
        (err: unknown) => {
          clearInterval(timer);
          tell({ type: 'progress', progress: fieldsOf(progress) } satisfies FromMover);
          tell({
            type: 'end',
            error: (err as Error).message ?? String(err),
            isAborted: err instanceof MigrationAbortedError,
          } satisfies FromMover);
        },
      );
      return;
    }
    case 'plan': {
      try {
        const work = workOutPlan(topologyFromJson(message.topology), message.job);
        tell({ type: 'planned', id: message.id, work, error: null, isPlanError: false } satisfies FromMover);
      } catch (err) {
        tell({ type: 'planned', id: message.id, work: null, error: (err as Error).message ?? String(err), isPlanError: err instanceof PlanError } satisfies FromMover);
      }
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
