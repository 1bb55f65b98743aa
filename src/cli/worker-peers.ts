import type { Worker } from 'node:cluster';
import type { PeerAnswer, PeerHandler, PeerQuestion, WorkerPeers } from '../dispatch/worker-peers';

/**
 * `workers: N`: the data path's WorkerPeers over node:cluster's IPC channels. Workers do not
 * talk to each other directly; the primary relays (PeerRelay): a question goes to every other
 * worker and their answers come back as one message, monitor lines go to the workers that have
 * monitors, and each worker is told how many monitors the others have, so a proxy with none
 * sends no line at all.
 */

/** How long the primary waits for the workers' answers to one question. */
const ANSWER_WAIT_MS = 1_000;
/** A worker gives up on its question a little later, should the primary not answer at all. */
const ASK_WAIT_MS = ANSWER_WAIT_MS + 500;

type FromWorker =
  | { readonly type: 'peer-ask'; readonly id: number; readonly question: PeerQuestion }
  | { readonly type: 'peer-answer'; readonly id: number; readonly answer: PeerAnswer }
  | { readonly type: 'peer-monitors'; readonly count: number }
  | { readonly type: 'peer-monitor-lines'; readonly lines: string };

type ToWorker =
  | { readonly type: 'peer-question'; readonly id: number; readonly question: PeerQuestion }
  | { readonly type: 'peer-answers'; readonly id: number; readonly answers: readonly PeerAnswer[] }
  | { readonly type: 'peer-remote-monitors'; readonly count: number }
  | { readonly type: 'peer-monitor-lines'; readonly lines: string };

function isPeerMessage<T extends { readonly type: string }>(message: unknown): message is T {
  const type = typeof message === 'object' && message !== null ? (message as { type?: unknown }).type : undefined;
  return typeof type === 'string' && type.startsWith('peer-');
}

/** In a worker: the other workers, reached through the primary. */
export class IpcWorkerPeers implements WorkerPeers {
  #handler: PeerHandler | null = null;
  #nextId = 1;
  readonly #pending = new Map<number, { readonly resolve: (answers: PeerAnswer[]) => void; readonly timer: NodeJS.Timeout }>();

  constructor() {
    process.on('message', (message: unknown) => {
      if (isPeerMessage<ToWorker>(message)) this.#onMessage(message);
    });
  }

  attach(handler: PeerHandler): void {
    this.#handler = handler;
  }

  ask(question: PeerQuestion): Promise<PeerAnswer[]> {
    const id = this.#nextId++;
    return new Promise((resolve) => {
      const timer = setTimeout(() => this.#settle(id, []), ASK_WAIT_MS);
      this.#pending.set(id, { resolve, timer });
      if (!send({ type: 'peer-ask', id, question })) this.#settle(id, []);
    });
  }

  monitorsChanged(count: number): void {
    send({ type: 'peer-monitors', count });
  }

  sendMonitorLines(lines: string): void {
    send({ type: 'peer-monitor-lines', lines });
  }

  #onMessage(message: ToWorker): void {
    switch (message.type) {
      case 'peer-question':
        // A worker still starting has no data path to ask yet: the primary's wait covers it.
        if (this.#handler !== null) send({ type: 'peer-answer', id: message.id, answer: this.#handler.answer(message.question) });
        return;
      case 'peer-answers':
        this.#settle(message.id, [...message.answers]);
        return;
      case 'peer-remote-monitors':
        this.#handler?.onRemoteMonitors(message.count);
        return;
      case 'peer-monitor-lines':
        this.#handler?.onMonitorLines(message.lines);
        return;
    }
  }

  #settle(id: number, answers: PeerAnswer[]): void {
    const pending = this.#pending.get(id);
    if (pending === undefined) return;
    this.#pending.delete(id);
    clearTimeout(pending.timer);
    pending.resolve(answers);
  }
}

/** `process.send` that reports whether the channel took the message (it is gone at shutdown). */
function send(message: FromWorker): boolean {
  if (process.send === undefined || !process.connected) return false;
  process.send(message);
  return true;
}

interface RelayedQuestion {
  readonly asker: Worker;
  readonly askerId: number;
  readonly answers: PeerAnswer[];
  waiting: number;
  readonly timer: NodeJS.Timeout;
}

/** In the primary: carries questions, answers and monitor lines between the workers. */
export class PeerRelay {
  /** The running workers and their indexes, as the primary keeps them. */
  readonly #workers: ReadonlyMap<Worker, number>;
  /** Monitors per worker index. */
  readonly #monitors = new Map<number, number>();
  readonly #questions = new Map<number, RelayedQuestion>();
  #nextId = 1;

  constructor(workers: ReadonlyMap<Worker, number>) {
    this.#workers = workers;
  }

  /** A message from `worker`; false when it is not one of the relay's. */
  onMessage(worker: Worker, message: unknown): boolean {
    if (!isPeerMessage<FromWorker>(message)) return false;
    switch (message.type) {
      case 'peer-ask':
        this.#relayQuestion(worker, message.id, message.question);
        break;
      case 'peer-answer': {
        const question = this.#questions.get(message.id);
        if (question === undefined) break;
        question.answers.push(message.answer);
        if (--question.waiting === 0) this.#answer(message.id);
        break;
      }
      case 'peer-monitors':
        this.#monitors.set(this.#workers.get(worker) ?? -1, message.count);
        this.#tellMonitorCounts();
        break;
      case 'peer-monitor-lines':
        for (const [other, index] of this.#workers) {
          if (other !== worker && (this.#monitors.get(index) ?? 0) > 0) deliver(other, { type: 'peer-monitor-lines', lines: message.lines });
        }
        break;
    }
    return true;
  }

  /** A worker is up (again): it learns how many monitors the others have. */
  onReady(worker: Worker): void {
    deliver(worker, { type: 'peer-remote-monitors', count: this.#remoteMonitors(this.#workers.get(worker) ?? -1) });
  }

  /** A worker exited: its monitors are gone with it. */
  onExit(index: number): void {
    if (this.#monitors.delete(index)) this.#tellMonitorCounts();
  }

  close(): void {
    for (const id of [...this.#questions.keys()]) this.#answer(id);
  }

  #relayQuestion(asker: Worker, askerId: number, question: PeerQuestion): void {
    const id = this.#nextId++;
    const relayed: RelayedQuestion = { asker, askerId, answers: [], waiting: 0, timer: setTimeout(() => this.#answer(id), ANSWER_WAIT_MS) };
    this.#questions.set(id, relayed);
    for (const worker of this.#workers.keys()) {
      if (worker === asker || !worker.isConnected()) continue;
      if (deliver(worker, { type: 'peer-question', id, question })) relayed.waiting++;
    }
    if (relayed.waiting === 0) this.#answer(id);
  }

  #answer(id: number): void {
    const question = this.#questions.get(id);
    if (question === undefined) return;
    this.#questions.delete(id);
    clearTimeout(question.timer);
    deliver(question.asker, { type: 'peer-answers', id: question.askerId, answers: question.answers });
  }

  #remoteMonitors(index: number): number {
    let count = 0;
    for (const [other, monitors] of this.#monitors) if (other !== index) count += monitors;
    return count;
  }

  #tellMonitorCounts(): void {
    for (const [worker, index] of this.#workers) deliver(worker, { type: 'peer-remote-monitors', count: this.#remoteMonitors(index) });
  }
}

function deliver(worker: Worker, message: ToWorker): boolean {
  if (!worker.isConnected()) return false;
  worker.send(message);
  return true;
}
