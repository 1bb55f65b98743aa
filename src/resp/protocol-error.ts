import { RedisError } from 'redis-errors';

/**
 * Malformed client input. The session answers `-ERR Protocol error: <message>` and closes,
 * as redis-server does, because the stream can no longer be framed.
 */
export class ProtocolError extends RedisError {
  override get name(): string {
    return 'ProtocolError';
  }
}
