interface OpenQuestion<T> {
  readonly answers: T[];
  waiting: number;
  readonly done: (answers: T[]) => void;
  readonly timer: NodeJS.Timeout;
}

/**
 * Answers to questions put to several processes at once (the workers, over the IPC channel). A
 * question is done when every process it reached has answered or its wait has run out, whichever
 * comes first: a process that does not answer in time (starting, stuck, gone) is left out of
 * that question rather than failing it.
 */
export class AnswerCollector<T> {
  readonly #waitMs: number;
  readonly #open = new Map<number, OpenQuestion<T>>();
  #nextId = 1;

  constructor(waitMs: number) {
    this.#waitMs = waitMs;
  }

  /**
   * Puts a question: `send(id)` sends it under that id and returns how many processes it
   * reached (IPC delivery is asynchronous, so no answer comes before it returns); `done` gets
   * the answers once they are all in or the wait has run out.
   */
  ask(send: (id: number) => number, done: (answers: T[]) => void): void {
    const id = this.#nextId++;
    const open: OpenQuestion<T> = { answers: [], waiting: 0, done, timer: setTimeout(() => this.#finish(id), this.#waitMs) };
    this.#open.set(id, open);
    open.waiting = send(id);
    if (open.waiting === 0) this.#finish(id);
  }

  /** One process's answer to question `id`; `undefined` when it answered with nothing to add. */
  answer(id: number, answer: T | undefined): void {
    const open = this.#open.get(id);
    if (open === undefined) return;
    if (answer !== undefined) open.answers.push(answer);
    if (--open.waiting === 0) this.#finish(id);
  }

  /** Ends every open question with the answers it has so far. */
  finishAll(): void {
    for (const id of [...this.#open.keys()]) this.#finish(id);
  }

  #finish(id: number): void {
    const open = this.#open.get(id);
    if (open === undefined) return;
    this.#open.delete(id);
    clearTimeout(open.timer);
    open.done(open.answers);
  }
}
