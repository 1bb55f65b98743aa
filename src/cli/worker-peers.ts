import type { Worker } from 'node:cluster';
import type { PeerAnswer, PeerHandler, PeerQuestion, WorkerPeers } from '../dispatch/worker-peers';
import { AnswerCollector } from '../runtime/answer-collector';

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
  /** This worker's questions: one answer each, the primary's (all the other workers' answers). */
  readonly #questions = new AnswerCollector<PeerAnswer[]>(ASK_WAIT_MS);

  constructor() {
    process.on('message', (message: unknown) => {
      if (isPeerMessage<ToWorker>(message)) this.#onMessage(message);
    });
  }

  attach(handler: PeerHandler): void {
    this.#handler = handler;
  }

  ask(question: PeerQuestion): Promise<PeerAnswer[]> {
    return new Promise((resolve) => {
      this.#questions.ask(
        (id) => (send({ type: 'peer-ask', id, question }) ? 1 : 0),
        (answers) => resolve(answers[0] ?? []),
      );
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
        this.#questions.answer(message.id, [...message.answers]);
        return;
      case 'peer-remote-monitors':
        this.#handler?.onRemoteMonitors(message.count);
        return;
      case 'peer-monitor-lines':
        this.#handler?.onMonitorLines(message.lines);
        return;
    }
  }
}

/** `process.send` that reports whether the channel took the message (it is gone at shutdown). */
function send(message: FromWorker): boolean {
  if (process.send === undefined || !process.connected) return false;
  process.send(message);
  return true;
}

/** In the primary: carries questions, answers and monitor lines between the workers. */
export class PeerRelay {
  /** The running workers and their indexes, as the primary keeps them. */
  readonly #workers: ReadonlyMap<Worker, number>;
  /** Monitors per worker index. */
  readonly #monitors = new Map<number, number>();
  /** Questions relayed to the other workers, by the relay's own ids. */
  readonly #questions = new AnswerCollector<PeerAnswer>(ANSWER_WAIT_MS);

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
      case 'peer-answer':
        this.#questions.answer(message.id, message.answer);
        break;
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
    this.#questions.finishAll();
  }

  #relayQuestion(asker: Worker, askerId: number, question: PeerQuestion): void {
    const send = (id: number): number => {
      let sent = 0;
      for (const worker of this.#workers.keys()) {
        if (worker !== asker && deliver(worker, { type: 'peer-question', id, question })) sent++;
      }
      return sent;
    };
    this.#questions.ask(send, (answers) => deliver(asker, { type: 'peer-answers', id: askerId, answers }));
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
