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

  /** The item `index` places behind the head (0 = the head); undefined past the end. */
  at(index: number): T | undefined {
    return index < this.#length ? this.#items[(this.#head + index) % this.#items.length] : undefined;
  }

  /** Replaces the item `index` places behind the head. */
  set(index: number, item: T): void {
    if (index >= this.#length) throw new RangeError(`no item ${index} in a queue of ${this.#length}`);
    this.#items[(this.#head + index) % this.#items.length] = item;
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

  /** The value `index` places behind the oldest; NaN past the end. */
  at(index: number): number {
    return index < this.#length ? this.#items[(this.#head + index) % this.#items.length]! : NaN;
  }

  clear(): void {
    this.#head = 0;
    this.#length = 0;
  }
}
