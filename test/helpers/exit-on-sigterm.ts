/**
 * Vitest setup file. Vitest ends a test file's worker with SIGTERM, also while a hook that
 * outlived its timeout is still stopping servers, and Node's default SIGTERM ends the process
 * without its 'exit' listeners: the harnesses' last-resort stops (redis-servers, proxies, load
 * processes, each stopped by PID from process 'exit') would never run, and what the hook had
 * not stopped yet would outlive the run. Vitest's worker replaces process.exit while tests run,
 * so the listeners are run here, and the signal then ends the process as it would have.
 */
const MARK = Symbol.for('slotproxy.test.exitOnSigterm');
const processWithMark = process as NodeJS.Process & { [MARK]?: true };

if (processWithMark[MARK] !== true) {
  processWithMark[MARK] = true;
  process.once('SIGTERM', () => {
    process.emit('exit', 128 + 15);
    process.kill(process.pid, 'SIGTERM');
  });
}
