/**
 * A clock read once per socket event instead of once per command: requests parsed from one
 * read share its timestamp. Seconds, monotonic.
 */
let now = performance.now() / 1000;

/** Reads the real clock; call at the start of each socket event. */
export function tick(): number {
  now = performance.now() / 1000;
  return now;
}

/** The time of the current socket event. */
export function turnTime(): number {
  return now;
}
