/** A growable ring buffer queue: O(1) push and shift without Array#shift's copying. */
export class Fifo<T> {
  #items: (T | undefined)[];
  #head = 0;
  #length = 0;

  constructor(capacity = 16) {
    this.#items = new Array<T | undefined>(capacity);
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
