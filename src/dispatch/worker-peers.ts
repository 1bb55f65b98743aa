import type { KillFilter, ListFilter } from './client-admin';

/**
 * The proxy's other workers (`workers: N`), as the data path sees them. Each worker holds only
 * the clients node:cluster handed it, yet CLIENT LIST, CLIENT KILL, MONITOR and INFO's client and
 * command counts are about the whole proxy, as they are about a whole redis-server. Declared here,
 * by the data path; `cli/worker-peers.ts` implements it over the IPC channel, through the primary.
 * A proxy with one process has no peers (null), and nothing here runs.
 */
export interface WorkerPeers {
  /**
   * Every other worker's answer to `question`. A worker that does not answer within a second
   * (starting, stuck, gone) is left out, as a scrape of the metrics leaves it out.
   */
  ask(question: PeerQuestion): Promise<PeerAnswer[]>;
  /** This worker's number of monitors changed to `count`. */
  monitorsChanged(count: number): void;
  /** Lines for the other workers' monitors (sent while `onRemoteMonitors` said there are some). */
  sendMonitorLines(lines: string): void;
  /** How this worker answers the others; called once, by the dispatcher. */
  attach(handler: PeerHandler): void;
}

/** What a worker does for its peers. */
export interface PeerHandler {
  answer(question: PeerQuestion): PeerAnswer;
  /** Monitor lines another worker's clients caused. */
  onMonitorLines(lines: string): void;
  /** How many monitors the other workers have now. */
  onRemoteMonitors(count: number): void;
}

export type PeerQuestion =
  | { readonly kind: 'client-list'; readonly filter: ListFilter }
  | { readonly kind: 'client-kill'; readonly filter: KillFilter }
  | { readonly kind: 'counts' };

export type PeerAnswer =
  | { readonly kind: 'client-list'; readonly lines: string }
  | { readonly kind: 'client-kill'; readonly killed: number }
  | { readonly kind: 'counts'; readonly counts: WorkerCounts };

/** A worker's share of INFO's counters. */
export interface WorkerCounts {
  readonly connectedClients: number;
  readonly totalConnectionsReceived: number;
  readonly totalCommandsProcessed: number;
  readonly instantaneousOpsPerSec: number;
}
