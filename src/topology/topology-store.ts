import { EventEmitter } from 'node:events';
import type { Topology } from './topology';

/**
 * Holds the current topology snapshot. The control plane publishes whole new snapshots; the
 * data path reads `current` and reacts to 'change'.
 */
export class TopologyStore extends EventEmitter<{ change: [next: Topology, previous: Topology] }> {
  #current: Topology;

  constructor(initial: Topology) {
    super();
    this.#current = initial;
  }

  get current(): Topology {
    return this.#current;
  }

  publish(next: Topology): void {
    if (next.epoch <= this.#current.epoch) {
      throw new RangeError(`topology epoch ${next.epoch} is not newer than ${this.#current.epoch}`);
    }
    const previous = this.#current;
    this.#current = next;
    this.emit('change', next, previous);
  }
}
