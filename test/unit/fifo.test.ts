import { describe, expect, it } from 'vitest';

import { Fifo, NumberFifo } from '../../src/io/fifo';

/** Shifts everything out. */
function drainAll<T>(fifo: Fifo<T>): T[] {
  const out: T[] = [];
  while (fifo.length > 0) out.push(fifo.shift()!);
  return out;
}

describe('Fifo', () => {
  it('is empty at first', () => {
    const fifo = new Fifo<number>();
    expect(fifo.length).toBe(0);
    expect(fifo.shift()).toBeUndefined();
    expect(fifo.peek()).toBeUndefined();
  });

  it('shifts in push order and peeks at the head', () => {
    const fifo = new Fifo<string>();
    fifo.push('a');
    fifo.push('b');
    expect(fifo.peek()).toBe('a');
    expect(fifo.length).toBe(2);
    expect(fifo.shift()).toBe('a');
    expect(fifo.peek()).toBe('b');
    expect(fifo.shift()).toBe('b');
    expect(fifo.shift()).toBeUndefined();
    expect(fifo.length).toBe(0);
  });

  it.each([1, 2, 3, 16])('grows past capacity %i keeping the order', (capacity) => {
    const fifo = new Fifo<number>(capacity);
    for (let i = 0; i < 1000; i++) fifo.push(i);
    expect(fifo.length).toBe(1000);
    expect(drainAll(fifo)).toEqual(Array.from({ length: 1000 }, (_, i) => i));
  });

  it('works with a capacity of 0', () => {
    const fifo = new Fifo<number>(0);
    fifo.push(1);
    fifo.push(2);
    expect(drainAll(fifo)).toEqual([1, 2]);
  });

  it('wraps around the end of its array without growing', () => {
    const fifo = new Fifo<number>(4);
    fifo.push(0);
    fifo.push(1);
    fifo.push(2);
    expect(fifo.shift()).toBe(0);
    expect(fifo.shift()).toBe(1);
    // head is at 2: these wrap to positions 3, 0, 1.
    fifo.push(3);
    fifo.push(4);
    fifo.push(5);
    expect(fifo.length).toBe(4);
    expect(drainAll(fifo)).toEqual([2, 3, 4, 5]);
  });

  it('reads and replaces items behind the head by index, wrapped', () => {
    const fifo = new Fifo<string>(4);
    for (const item of ['a', 'b', 'c']) fifo.push(item);
    fifo.shift();
    fifo.shift();
    // head is at 2: 'c', then 'd' and 'e' wrapped to positions 3 and 0.
    fifo.push('d');
    fifo.push('e');
    expect([fifo.at(0), fifo.at(1), fifo.at(2), fifo.at(3)]).toEqual(['c', 'd', 'e', undefined]);
    fifo.set(2, 'E');
    fifo.set(0, 'C');
    expect(() => fifo.set(3, 'x')).toThrow(RangeError);
    expect(drainAll(fifo)).toEqual(['C', 'd', 'E']);
  });

  it('grows while wrapped, keeping the order', () => {
    const fifo = new Fifo<number>(4);
    for (let i = 0; i < 4; i++) fifo.push(i);
    fifo.shift();
    fifo.shift();
    fifo.push(4);
    fifo.push(5); // full and wrapped: [4, 5, 2, 3] with head at 2
    fifo.push(6); // grows
    fifo.push(7);
    expect(fifo.peek()).toBe(2);
    expect(drainAll(fifo)).toEqual([2, 3, 4, 5, 6, 7]);
  });

  it('matches an array model over 100,000 random pushes and shifts', () => {
    const fifo = new Fifo<number>(2);
    const model: number[] = [];
    let seed = 7;
    let next = 0;
    for (let step = 0; step < 100_000; step++) {
      seed = (seed * 48271) % 2147483647;
      // Push a bit more often than shift, so the queue both grows and wraps many times.
      if (seed % 5 < 3) {
        fifo.push(next);
        model.push(next);
        next++;
      } else {
        expect(fifo.shift()).toBe(model.shift());
      }
      expect(fifo.length).toBe(model.length);
      expect(fifo.peek()).toBe(model[0]);
    }
    expect(drainAll(fifo)).toEqual(model);
  });

  it('keeps undefined-free items distinct from emptiness (objects)', () => {
    const fifo = new Fifo<{ id: number }>(2);
    const items = [{ id: 1 }, { id: 2 }, { id: 3 }];
    for (const item of items) fifo.push(item);
    expect(fifo.shift()).toBe(items[0]);
    expect(fifo.shift()).toBe(items[1]);
    expect(fifo.shift()).toBe(items[2]);
    expect(fifo.shift()).toBeUndefined();
  });
});

describe('NumberFifo', () => {
  it('answers NaN when empty', () => {
    const fifo = new NumberFifo();
    expect(fifo.length).toBe(0);
    expect(fifo.shift()).toBeNaN();
    expect(fifo.peek()).toBeNaN();
  });

  it.each([1, 2, 64])('grows past capacity %i keeping the order', (capacity) => {
    const fifo = new NumberFifo(capacity);
    for (let i = 0; i < 500; i++) fifo.push(i + 0.5);
    const out: number[] = [];
    while (fifo.length > 0) out.push(fifo.shift());
    expect(out).toEqual(Array.from({ length: 500 }, (_, i) => i + 0.5));
  });

  it('reads values behind the oldest by index, wrapped', () => {
    const fifo = new NumberFifo(4);
    for (let i = 0; i < 3; i++) fifo.push(i);
    fifo.shift();
    fifo.shift();
    fifo.push(3);
    fifo.push(4);
    expect([fifo.at(0), fifo.at(1), fifo.at(2)]).toEqual([2, 3, 4]);
    expect(fifo.at(3)).toBeNaN();
  });

  it('works with a capacity of 0', () => {
    const fifo = new NumberFifo(0);
    fifo.push(1);
    fifo.push(2);
    expect([fifo.shift(), fifo.shift()]).toEqual([1, 2]);
  });

  it('grows while wrapped, keeping the order', () => {
    const fifo = new NumberFifo(4);
    for (let i = 0; i < 4; i++) fifo.push(i);
    fifo.shift();
    fifo.shift();
    fifo.push(4);
    fifo.push(5);
    fifo.push(6);
    expect(fifo.peek()).toBe(2);
    const out: number[] = [];
    while (fifo.length > 0) out.push(fifo.shift());
    expect(out).toEqual([2, 3, 4, 5, 6]);
  });

  it('matches an array model over 100,000 random pushes and shifts', () => {
    const fifo = new NumberFifo(1);
    const model: number[] = [];
    let seed = 11;
    for (let step = 0; step < 100_000; step++) {
      seed = (seed * 48271) % 2147483647;
      if (seed % 5 < 3) {
        fifo.push(step / 1000);
        model.push(step / 1000);
      } else {
        expect(fifo.shift()).toBe(model.length === 0 ? NaN : model.shift());
      }
      expect(fifo.length).toBe(model.length);
    }
  });

  it('clear() empties it and it keeps working', () => {
    const fifo = new NumberFifo(2);
    fifo.push(1);
    fifo.push(2);
    fifo.push(3);
    fifo.clear();
    expect(fifo.length).toBe(0);
    expect(fifo.shift()).toBeNaN();
    fifo.push(4);
    expect(fifo.shift()).toBe(4);
  });
});
