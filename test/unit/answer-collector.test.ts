import { afterEach, describe, expect, it, vi } from 'vitest';
import { AnswerCollector } from '../../src/runtime/answer-collector';

afterEach(() => {
  vi.useRealTimers();
});

/** Puts a question that reached `reached` processes; its id, and the spy its answers go to. */
function ask<T>(collector: AnswerCollector<T>, reached: number): { id: number; done: ReturnType<typeof vi.fn> } {
  let asked = -1;
  const done = vi.fn();
  collector.ask((id) => {
    asked = id;
    return reached;
  }, done);
  return { id: asked, done };
}

describe('AnswerCollector', () => {
  it('is done once every process reached has answered, with their answers in arrival order', () => {
    const collector = new AnswerCollector<string>(1_000);
    const { id: asked, done } = ask(collector, 3);
    collector.answer(asked, 'b');
    collector.answer(asked, undefined);
    expect(done).not.toHaveBeenCalled();
    collector.answer(asked, 'a');
    expect(done).toHaveBeenCalledWith(['b', 'a']);
    // A late or repeated answer to a finished question is dropped.
    collector.answer(asked, 'c');
    expect(done).toHaveBeenCalledTimes(1);
  });

  it('ends a question with the answers it has when its wait runs out', () => {
    vi.useFakeTimers();
    const collector = new AnswerCollector<number>(500);
    const { id: asked, done } = ask(collector, 2);
    collector.answer(asked, 7);
    vi.advanceTimersByTime(499);
    expect(done).not.toHaveBeenCalled();
    vi.advanceTimersByTime(1);
    expect(done).toHaveBeenCalledWith([7]);
  });

  it('answers at once when the question reached no process, and keeps questions apart by id', () => {
    const collector = new AnswerCollector<string>(1_000);
    expect(ask(collector, 0).done).toHaveBeenCalledWith([]);

    const first = ask(collector, 1);
    const second = ask(collector, 1);
    expect(second.id).not.toBe(first.id);
    collector.answer(second.id, 'second');
    expect(second.done).toHaveBeenCalledWith(['second']);
    expect(first.done).not.toHaveBeenCalled();
    collector.finishAll();
    expect(first.done).toHaveBeenCalledWith([]);
  });
});
