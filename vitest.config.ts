import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // Suites start their own redis-server processes; two cores do not gain from more forks.
    pool: 'forks',
    maxWorkers: 2,
  },
});
