import { describe, expect, it } from 'vitest';
import { progressLine } from '../../src/cli/resharding';
import type { PlanView, ReshardStatus } from '../../src/control/resharding';

const plan: PlanView = {
  id: 'p1',
  op: 'reshard',
  trigger: 'admin',
  addShards: [],
  removeShards: [],
  slotsToMove: 100,
  moves: [{ from: 's1', to: 's2', count: 100, ranges: [[0, 99]] }],
  countsBefore: { s1: 8192, s2: 8192 },
  countsAfter: { s1: 8092, s2: 8292 },
};

function status(state: ReshardStatus['state'], slotsTotal: number, slotsDone: number, view: PlanView | null = plan): ReshardStatus {
  return {
    state,
    plan: view,
    error: null,
    progress: {
      slotsTotal,
      slotsDone,
      slotsMigrating: 0,
      keysMoved: slotsDone * 10,
      bigKeysMoved: 0,
      keysEstimate: 1000,
      errors: 0,
      lastError: null,
      elapsedMs: 1000,
      keysPerSecond: slotsDone * 10,
      slotsPerSecond: slotsDone,
      etaSeconds: null,
    },
    epoch: 1,
    shards: [],
    slotsMigrating: 0,
  };
}

describe('the resharding CLI progress line', () => {
  it('shows the plan\'s slot count and an empty bar before the mover\'s first report', () => {
    expect(progressLine(status('running', 0, 0))).toMatch(/^\[-{30}\] 0\/100 slots/);
  });

  it('fills the bar with the slots done', () => {
    expect(progressLine(status('running', 100, 50))).toMatch(/^\[#{15}-{15}\] 50\/100 slots  500 keys/);
  });

  it('shows a finished plan with nothing to move as complete', () => {
    expect(progressLine(status('done', 0, 0, { ...plan, slotsToMove: 0, moves: [] }))).toMatch(/^\[#{30}\] 0\/0 slots/);
  });
});
