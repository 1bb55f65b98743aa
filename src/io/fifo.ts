/** A growable ring buffer queue: O(1) push and shift without Array#shift's copying. */
export class Fifo<T> {
  #items: (T | undefined)[];
  #head = 0;
  #length = 0;

  constructor(capacity = 16) {
    this.#items = new Array<T | undefined>(Math.max(1, capacity));
  }

  get length(): number {
    return this.#length;
  }

  push(item: T): void {
    if (this.#length === this.#items.length) this.#grow();
    this.#items[(this.#head + this.#length) % this.#items.length] = item;
    this.#length++;
  }

  shift(): T | undefined {
    if (this.#length === 0) return undefined;
    const item = this.#items[this.#head];
    this.#items[this.#head] = undefined;
    this.#head = (this.#head + 1) % this.#items.length;
    this.#length--;
    return item;
  }

  peek(): T | undefined {
    return this.#length === 0 ? undefined : this.#items[this.#head];
  }

  #grow(): void {
    const size = this.#items.length;
    const next = new Array<T | undefined>(size * 2);
    for (let i = 0; i < this.#length; i++) next[i] = this.#items[(this.#head + i) % size];
    this.#items = next;
    this.#head = 0;
  }
}

/** A ring of numbers in a Float64Array: no boxing, so pushing a timestamp allocates nothing. */
export class NumberFifo {
  #items: Float64Array;
  #head = 0;
  #length = 0;

  constructor(capacity = 64) {
    this.#items = new Float64Array(Math.max(1, capacity));
  }

  get length(): number {
    return this.#length;
  }

  push(value: number): void {
    if (this.#length === this.#items.length) {
      const next = new Float64Array(this.#items.length * 2);
      for (let i = 0; i < this.#length; i++) next[i] = this.#items[(this.#head + i) % this.#items.length]!;
      this.#items = next;
      this.#head = 0;
    }
    this.#items[(this.#head + this.#length) % this.#items.length] = value;
    this.#length++;
  }

  /** The oldest value, removed; NaN when empty. */
  shift(): number {
    if (this.#length === 0) return NaN;
    const value = this.#items[this.#head]!;
    this.#head = (this.#head + 1) % this.#items.length;
    this.#length--;
    return value;
  }

  /** The oldest value; NaN when empty. */
  peek(): number {
    return this.#length === 0 ? NaN : this.#items[this.#head]!;
  }

  clear(): void {
    this.#head = 0;
    this.#length = 0;
  }
}
