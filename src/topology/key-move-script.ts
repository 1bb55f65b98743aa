/**
 * The one way keys leave a migrating slot's source shard, shared by the data path (a command's
 * keys, on demand) and the control plane's background mover: a Lua script run on the source that
 * sizes each key and MIGRATEs (REPLACE) only the small ones, in one atomic step.
 *
 * A big key (a collection of more than BIG_KEY_MAX_ELEMENTS elements, or more than
 * BIG_KEY_MAX_BYTES by STRLEN or MEMORY USAGE) is never MIGRATEd whole: one MIGRATE of a 5 MB
 * list holds its shard for tens of milliseconds. The mover copies it in chunks instead, and
 * until that copy is done the key stays whole on the source, where this script answers BIG for
 * it: the data path then makes the command wait, so nothing reads or writes the key meanwhile.
 *
 * REPLACE is safe because the source is the authority for every key it still holds: a command
 * runs on the target only after this script found its keys gone from the source, so a copy on
 * the target next to one on the source is a leftover (a timed-out MIGRATE, a chunked copy
 * interrupted by a crash), never a newer value.
 *
 * KEYS: the keys. ARGV: target host, target port, MIGRATE timeout (ms), max elements, max bytes,
 * mode, and optionally the target's password.
 *   mode 'all'  (data path): +BIG when any key is big (nothing moved), else MIGRATE's reply,
 *                +OK (moved) or +NOKEY (none of the keys is on the source).
 *   mode 'some' (mover): moves the small keys; replies [moved count, big key, big key, ...].
 */

/** Collections with more elements than this are copied in chunks, not MIGRATEd. */
export const BIG_KEY_MAX_ELEMENTS = 2000;
/** Keys larger than this (STRLEN, or MEMORY USAGE for collections) are copied in chunks. */
export const BIG_KEY_MAX_BYTES = 1024 * 1024;
/** Keys per MIGRATE inside the script: Lua's unpack() has a bounded stack. */
const KEYS_PER_MIGRATE = 500;

export type KeyMoveMode = 'all' | 'some';

export const KEY_MOVE_SCRIPT = `
local maxElements = tonumber(ARGV[4])
local maxBytes = tonumber(ARGV[5])
local small = {}
local big = {}
for i = 1, #KEYS do
  local key = KEYS[i]
  local kind = redis.call('TYPE', key)['ok']
  if kind ~= 'none' then
    local isBig
    if kind == 'string' then
      isBig = redis.call('STRLEN', key) > maxBytes
    else
      local n = 0
      if kind == 'hash' then n = redis.call('HLEN', key)
      elseif kind == 'list' then n = redis.call('LLEN', key)
      elseif kind == 'set' then n = redis.call('SCARD', key)
      elseif kind == 'zset' then n = redis.call('ZCARD', key)
      elseif kind == 'stream' then n = redis.call('XLEN', key) end
      isBig = n > maxElements or (redis.call('MEMORY', 'USAGE', key) or 0) > maxBytes
    end
    if isBig then big[#big + 1] = key else small[#small + 1] = key end
  end
end
if ARGV[6] == 'all' and #big > 0 then return redis.status_reply('BIG') end
local i = 1
while i <= #small do
  local args = {'MIGRATE', ARGV[1], ARGV[2], '', '0', ARGV[3], 'REPLACE'}
  if ARGV[7] then
    args[#args + 1] = 'AUTH'
    args[#args + 1] = ARGV[7]
  end
  args[#args + 1] = 'KEYS'
  for j = i, math.min(i + ${KEYS_PER_MIGRATE} - 1, #small) do args[#args + 1] = small[j] end
  redis.call(unpack(args))
  i = i + ${KEYS_PER_MIGRATE}
end
if ARGV[6] == 'all' then
  if #small > 0 then return redis.status_reply('OK') end
  return redis.status_reply('NOKEY')
end
local reply = {#small}
for j = 1, #big do reply[#reply + 1] = big[j] end
return reply
`;

/** Where the keys go, and how. */
export interface KeyMoveTarget {
  readonly host: string;
  readonly port: number;
  readonly timeoutMs: number;
  /** The target's password for MIGRATE's AUTH; null when none. */
  readonly password: string | null;
}

/** The script's ARGV after the keys. */
export function keyMoveArgs(target: KeyMoveTarget, mode: KeyMoveMode): string[] {
  const args = [target.host, String(target.port), String(target.timeoutMs), String(BIG_KEY_MAX_ELEMENTS), String(BIG_KEY_MAX_BYTES), mode];
  if (target.password !== null) args.push(target.password);
  return args;
}
