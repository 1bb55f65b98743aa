import { writeConfirmation, type ShardInfo } from './topology';

/**
 * How keys leave a migrating slot's source shard: Lua scripts run on the source, shared by the
 * data path (a command's keys, moved on demand) and the control plane's background mover.
 *
 * The rule that makes every path safe: while a key exists on the source, the source's copy is
 * the authority. A command runs on the target only after a script found its keys gone from the
 * source (or deleted them), so a copy on the target next to one on the source is a leftover (a
 * timed-out MIGRATE, an interrupted or unconfirmed copy) and may be replaced (MIGRATE ...
 * REPLACE, RESTORE ... REPLACE).
 *
 * - On demand (KEY_MOVE_SCRIPT): sizes each key and MIGRATEs them in one atomic step. It answers
 *   +BIG instead for a key too big to MIGRATE at once, and +MOVING for a key the background
 *   mover has in flight: the command then waits and tries again. When the target's replicas
 *   must confirm the keys (writeConfirmation on the target), the script MIGRATEs a COPY (+COPIED), the data
 *   path WAITs on the target, then COPIED_KEYS_DELETE_SCRIPT deletes them from the source.
 * - In the background (DUMP_KEYS_SCRIPT, then RESTORE_KEYS_SCRIPT on the target, then RELEASE_KEYS_SCRIPT):
 *   the mover marks a batch of keys as in flight in MOVING_KEYS (a hash on the source) and
 *   reads them with DUMP in one step, restores them on the target, then deletes them from the
 *   source and unmarks them in one step. Unlike MIGRATE, the source never waits for the target,
 *   so a slow or descheduled target cannot stall the source's other clients. A crash in between
 *   leaves the keys whole on the source (the next start deletes MOVING_KEYS, after deleting on
 *   the target the copies of marked keys that were flushed meanwhile: FLUSHED_IN_FLIGHT_SCRIPT).
 * - With minReplicaAcks, a key leaves the source only once the target's replicas have it
 *   (writeConfirmation on the target): until then the target's copy is a leftover like any other, and the
 *   source's copy survives a failover of the target.
 * - Big keys (more than BIG_KEY_MAX_ELEMENTS elements, or more than BIG_KEY_MAX_BYTES by STRLEN
 *   or MEMORY USAGE) are copied in chunks by the mover (control/big-key-copier.ts).
 */

/** Collections with more elements than this are copied in chunks, not moved whole. */
export const BIG_KEY_MAX_ELEMENTS = 2000;
/** Keys larger than this (STRLEN, or MEMORY USAGE for collections) are copied in chunks. */
export const BIG_KEY_MAX_BYTES = 1024 * 1024;
/** The hash on a source shard naming the keys the background mover has in flight. */
export const MOVING_KEYS = '{slotproxy}:moving-keys';
/** A mark's value while the source's copy of the key is the authority (DUMP_KEYS_SCRIPT). */
const MARK_ON_SOURCE = '1';
/** A mark's value once DELETE_RESTORED_SCRIPT has deleted the key here: the target's copy is the key. */
const MARK_LEFT = '2';
/** Keys per MIGRATE / HDEL inside a script: Lua's unpack() has a bounded stack. */
const KEYS_PER_CALL = 500;

/** Lua: runs `body` for each run of at most `size` elements of the table `list` (as `i` to `last`): unpack() has a bounded stack. */
function forEachChunk(list: string, size: number, body: string): string {
  return `
do
  local i = 1
  while i <= #${list} do
    local last = math.min(i + ${size} - 1, #${list})
    ${body}
    i = last + 1
  end
end`;
}

/** Lua: sets `isBig` for the existing key `key` of type `kind` (ARGV[maxElementsArg], ARGV[maxBytesArg]). */
function sizeCheck(maxElementsArg: number, maxBytesArg: number): string {
  return `
    local isBig
    if kind == 'string' then
      isBig = redis.call('STRLEN', key) > tonumber(ARGV[${maxBytesArg}])
    else
      local n = 0
      if kind == 'hash' then n = redis.call('HLEN', key)
      elseif kind == 'list' then n = redis.call('LLEN', key)
      elseif kind == 'set' then n = redis.call('SCARD', key)
      elseif kind == 'zset' then n = redis.call('ZCARD', key)
      elseif kind == 'stream' then n = redis.call('XLEN', key) end
      isBig = n > tonumber(ARGV[${maxElementsArg}]) or (redis.call('MEMORY', 'USAGE', key) or 0) > tonumber(ARGV[${maxBytesArg}])
    end`;
}

/**
 * KEYS: the command's keys. ARGV: target host, target port, MIGRATE timeout (ms), max elements,
 * max bytes, MOVE or COPY, the fence (ms since the epoch), and optionally the target's password.
 * Replies +MOVING, +BIG (nothing moved), +OK (moved) / +COPIED (copied, still here), +NOKEY (none
 * of the keys is on the source) or +STALE (nothing done).
 *
 * The fence: a script that runs after it does nothing (+STALE). The data path sends it to the
 * source's primary; if that node froze with the script unread and was failed over, the move was
 * sent again to the promoted replica and clients wrote the key on the target since. When the old
 * primary wakes, the stale script must not MIGRATE its old copy over theirs (REPLACE). The data
 * path starts a move over only once the fence of the last attempt has passed (its clock and the
 * shards' are taken to agree within FENCE_SKEW_MS).
 */
export const KEY_MOVE_SCRIPT = `
local now = redis.call('TIME')
if tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) > tonumber(ARGV[7]) then return redis.status_reply('STALE') end
for i = 1, #KEYS do
  if redis.call('HEXISTS', '${MOVING_KEYS}', KEYS[i]) == 1 then return redis.status_reply('MOVING') end
end
local present = {}
for i = 1, #KEYS do
  local key = KEYS[i]
  local kind = redis.call('TYPE', key)['ok']
  if kind ~= 'none' then
    ${sizeCheck(4, 5)}
    if isBig then return redis.status_reply('BIG') end
    present[#present + 1] = key
  end
end
if #present == 0 then return redis.status_reply('NOKEY') end
${forEachChunk(
  'present',
  KEYS_PER_CALL,
  `local args = {'MIGRATE', ARGV[1], ARGV[2], '', '0', ARGV[3], 'REPLACE'}
    if ARGV[6] == 'COPY' then args[#args + 1] = 'COPY' end
    if ARGV[8] then
      args[#args + 1] = 'AUTH'
      args[#args + 1] = ARGV[8]
    end
    args[#args + 1] = 'KEYS'
    for j = i, last do args[#args + 1] = present[j] end
    redis.call(unpack(args))`,
)}
if ARGV[6] == 'COPY' then return redis.status_reply('COPIED') end
return redis.status_reply('OK')
`;

/**
 * KEYS: a command's keys, which KEY_MOVE_SCRIPT copied to the target and the target's replicas
 * have confirmed. Deletes them here (+OK), unless the background mover has marked one since
 * (+MOVING, nothing deleted): its batch may still RESTORE its own copy on the target, and that
 * must not land after the command has run there. The command goes to the target once +OK.
 */
export const COPIED_KEYS_DELETE_SCRIPT = `
for i = 1, #KEYS do
  if redis.call('HEXISTS', '${MOVING_KEYS}', KEYS[i]) == 1 then return redis.status_reply('MOVING') end
end
${forEachChunk('KEYS', KEYS_PER_CALL, `redis.call('DEL', unpack(KEYS, i, last))`)}
return redis.status_reply('OK')
`;

/**
 * KEYS: keys found by the mover's scan. ARGV: max elements, max bytes. Marks the small ones as
 * in flight and replies [n, key, dump, expire-at (ms, -1 for none), ... n times, big key, ...].
 *
 * MOVING_KEYS itself is skipped, as if absent: it is a key of slot 3025 like any other, so when
 * that slot moves, the mover's SCAN and its key index (a new-key event each time a batch
 * creates the hash) hand it over with the slot's keys. Moved, it landed on the target with the
 * marks of its batch and stayed there after the plan (a key no client wrote, counted by DBSIZE).
 *
 * `allow-oom`: the marks are the script's only write, a few bytes a key, freed at the release;
 * a source out of memory (the usual reason to move keys off it) must still give them away.
 */
export const DUMP_KEYS_SCRIPT = `#!lua flags=allow-oom
local reply = {0}
local big = {}
local marks = {}
for i = 1, #KEYS do
  local key = KEYS[i]
  local kind = 'none'
  if key ~= '${MOVING_KEYS}' then kind = redis.call('TYPE', key)['ok'] end
  if kind ~= 'none' then
    ${sizeCheck(1, 2)}
    if isBig then
      big[#big + 1] = key
    else
      marks[#marks + 1] = key
      marks[#marks + 1] = '${MARK_ON_SOURCE}'
      reply[#reply + 1] = key
      reply[#reply + 1] = redis.call('DUMP', key)
      reply[#reply + 1] = redis.call('PEXPIRETIME', key)
    end
  end
end
${forEachChunk('marks', 2 * KEYS_PER_CALL, `redis.call('HSET', '${MOVING_KEYS}', unpack(marks, i, last))`)}
reply[1] = #marks / 2
for j = 1, #big do reply[#reply + 1] = big[j] end
return reply
`;

/**
 * KEYS: keys now restored on the target: deleted here and unmarked. ARGV: keys to unmark only
 * (not restored: they stay whole here). Replies the restored keys that were no longer here: a
 * flush through the proxy, which keeps the marks, emptied the shard while they were in flight
 * (or they expired). Those stay marked, so no command touches them, until the caller has deleted
 * their copies on the target, which would otherwise bring flushed keys back; then it unmarks them
 * (this script, with them in ARGV).
 */
export const RELEASE_KEYS_SCRIPT = `
local gone = {}
for i = 1, #KEYS do
  if redis.call('DEL', KEYS[i]) == 1 then redis.call('HDEL', '${MOVING_KEYS}', KEYS[i]) else gone[#gone + 1] = KEYS[i] end
end
${forEachChunk('ARGV', KEYS_PER_CALL, `redis.call('HDEL', '${MOVING_KEYS}', unpack(ARGV, i, last))`)}
return gone
`;

/**
 * KEYS: keys now restored on the target (their deletes to be confirmed by the replicas before
 * they are unmarked): deleted here, marks kept. Replies those that were no longer here, as
 * RELEASE_KEYS_SCRIPT does.
 */
export const DELETE_RESTORED_SCRIPT = `
local gone = {}
for i = 1, #KEYS do
  if redis.call('DEL', KEYS[i]) == 1 then redis.call('HSET', '${MOVING_KEYS}', KEYS[i], '${MARK_LEFT}') else gone[#gone + 1] = KEYS[i] end
end
return gone
`;

/**
 * Run on a source as a mover starts, before it drops the marks a mover that died mid-batch left:
 * replies the marked keys no longer here whose copy here was still the authority. They left
 * while in flight (a flush through the proxy, or their TTL), so any copy of them on the target is
 * one the dead mover restored there and must be deleted, or a flushed key would come back.
 * (A key DELETE_RESTORED_SCRIPT deleted is marked MARK_LEFT: its target's copy is the key.)
 */
export const FLUSHED_IN_FLIGHT_SCRIPT = `
local marks = redis.call('HGETALL', '${MOVING_KEYS}')
local gone = {}
for i = 1, #marks, 2 do
  if marks[i + 1] == '${MARK_ON_SOURCE}' and redis.call('EXISTS', marks[i]) == 0 then gone[#gone + 1] = marks[i] end
end
return gone
`;

/**
 * A flush (FLUSHALL / FLUSHDB with its option, in ARGV) that keeps MOVING_KEYS: keys in flight
 * stay marked, so the mover learns they were flushed under it (RELEASE_KEYS_SCRIPT) and deletes
 * their copies on the target instead of leaving them there.
 */
export const FLUSH_KEEPING_MARKS_SCRIPT = `
local marks = redis.call('DUMP', '${MOVING_KEYS}')
redis.call(unpack(ARGV))
if marks then redis.call('RESTORE', '${MOVING_KEYS}', 0, marks) end
return redis.status_reply('OK')
`;

/**
 * Run on the target: KEYS are the keys, ARGV holds expire-at (ms, 0 for none) and DUMP payload
 * per key, in order. RESTOREs them all (REPLACE, ABSTTL) in one command; replies how many.
 */
export const RESTORE_KEYS_SCRIPT = `
for i = 1, #KEYS do
  redis.call('RESTORE', KEYS[i], ARGV[2 * i - 1], ARGV[2 * i], 'REPLACE', 'ABSTTL')
end
return #KEYS
`;

/**
 * Whether a move's delete on `source` is to be confirmed by its replicas (WAIT) before commands
 * may use the keys on the target: minReplicaAcks is set and the shard has that many healthy
 * replicas (with fewer, no replica could be promoted with a stale copy).
 */
export function confirmsMoves(source: ShardInfo | undefined, minReplicaAcks: number): boolean {
  // A delete is never refused: with too few replicas it goes unconfirmed.
  return writeConfirmation(source, minReplicaAcks, 'accept') === 'wait';
}

/**
 * A write Redis replicates that changes no data (PUBLISH is replicated outside cluster mode):
 * sent before WAIT on a connection that did not write the keys to confirm itself (MIGRATE's
 * RESTORE comes from the source's own connection), it moves this connection's replication
 * offset past them, and WAIT waits for that offset.
 */
export const REPLICATED_NOOP: readonly string[] = ['PUBLISH', '__slotproxy__:wait', ''];

/** Where the keys go, and how. */
export interface KeyMoveTarget {
  readonly host: string;
  readonly port: number;
  readonly timeoutMs: number;
  /** The target's password for MIGRATE's AUTH; null when none. */
  readonly password: string | null;
}

/** KEY_MOVE_SCRIPT's ARGV after the keys; `isCopy`: the keys stay on the source (+COPIED). */
export function keyMoveArgs(target: KeyMoveTarget, isCopy: boolean): string[] {
  return [target.host, String(target.port), String(target.timeoutMs), String(BIG_KEY_MAX_ELEMENTS), String(BIG_KEY_MAX_BYTES), isCopy ? 'COPY' : 'MOVE'];
}

/** ARGV: a fence (ms since the epoch), then a MIGRATE's arguments: runs it, unless past the fence (+STALE). */
export const FENCED_MIGRATE_SCRIPT = `
local now = redis.call('TIME')
if tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) > tonumber(ARGV[1]) then return redis.status_reply('STALE') end
return redis.call(unpack(ARGV, 2))
`;

/**
 * How much the data path's clock and a shard's may differ, at most, for the fence of
 * KEY_MOVE_SCRIPT to hold: a move starts over only this long after its last attempt's fence.
 */
export const FENCE_SKEW_MS = 250;

/** DUMP_KEYS_SCRIPT's ARGV after the keys. */
export const DUMP_KEYS_ARGS: readonly string[] = [String(BIG_KEY_MAX_ELEMENTS), String(BIG_KEY_MAX_BYTES)];
