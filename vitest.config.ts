import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // Suites start their own redis-server processes and several measure latency (failover
    // times, p99 during a reshard): one file at a time keeps them from measuring each other.
    pool: 'forks',
    fileParallelism: false,
    setupFiles: ['test/helpers/exit-on-sigterm.ts'],
  },
});
