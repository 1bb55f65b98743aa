import { afterEach, describe, expect, it, vi } from 'vitest';
import { AnswerCollector } from '../../src/runtime/answer-collector';

afterEach(() => {
  vi.useRealTimers();
});

describe('AnswerCollector', () => {
  it('is done once every process reached has answered, with their answers in arrival order', () => {
    const collector = new AnswerCollector<string>(1_000);
    const done = vi.fn();
    let asked = -1;
    collector.ask((id) => {
      asked = id;
      return 3;
    }, done);
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
    const done = vi.fn();
    let asked = -1;
    collector.ask((id) => {
      asked = id;
      return 2;
    }, done);
    collector.answer(asked, 7);
    vi.advanceTimersByTime(499);
    expect(done).not.toHaveBeenCalled();
    vi.advanceTimersByTime(1);
    expect(done).toHaveBeenCalledWith([7]);
  });

  it('answers at once when the question reached no process, and keeps questions apart by id', () => {
    const collector = new AnswerCollector<string>(1_000);
    const none = vi.fn();
    collector.ask(() => 0, none);
    expect(none).toHaveBeenCalledWith([]);

    const ids: number[] = [];
    const first = vi.fn();
    const second = vi.fn();
    collector.ask((id) => (ids.push(id), 1), first);
    collector.ask((id) => (ids.push(id), 1), second);
    expect(new Set(ids).size).toBe(2);
    collector.answer(ids[1]!, 'second');
    expect(second).toHaveBeenCalledWith(['second']);
    expect(first).not.toHaveBeenCalled();
    collector.finishAll();
    expect(first).toHaveBeenCalledWith([]);
  });
});
