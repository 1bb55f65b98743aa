import RedisParser from 'redis-parser';
import type { RespValue } from './resp-writer';

/**
 * Decodes one complete reply frame with redis-parser, for replies that must be merged (fan-out).
 * The frame is complete (the scanner framed it), so the parser answers synchronously and one
 * shared parser serves every call.
 */
let decoded: RespValue = null;
const parser = new RedisParser({
  returnBuffers: true,
  returnReply(reply: RespValue) {
    decoded = reply;
  },
  returnError(err: Error) {
    decoded = err;
  },
  returnFatalError(err: Error) {
    decoded = err;
  },
});

export function decodeReply(frame: Buffer): RespValue {
  decoded = null;
  parser.execute(frame);
  const value = decoded;
  decoded = null;
  return value;
}
