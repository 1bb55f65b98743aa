import calculateSlot from 'cluster-key-slot';
import type { RequestFrame } from '../resp/request-parser';

/** Redis Cluster's hash slot of argument i: CRC16 mod 16384 of the key, or of its {hash tag}. */
export function argSlot(frame: RequestFrame, i: number): number {
  return calculateSlot(frame.arg(i) as unknown as string);
}

export { calculateSlot };
