/**
 * How the proxy carries out a command: the vocabulary of the command table, after Redis's own
 * command tips (request_policy / response_policy).
 */
export type Handling =
  /** All keys in one slot: forwarded as is to the shard owning it; CROSSSLOT otherwise. */
  | 'single'
  /** Keys grouped per shard into one sub-command each, sent in parallel, replies merged. */
  | 'split'
  /** Sent to every shard's primary, replies merged. */
  | 'broadcast'
  /** Keyless, any one shard answers. */
  | 'any-shard'
  /** Answered by the proxy itself. */
  | 'local'
  /** MULTI / EXEC / DISCARD / WATCH / UNWATCH: queued by the proxy, run on one shard. */
  | 'transaction'
  /** May block: runs on a connection of the client's own, so it never delays others. */
  | 'blocking'
  /** SUBSCRIBE and friends: the client's own Pub/Sub connections, messages fanned in. */
  | 'pubsub'
  /** SCAN: one shard after another, on each shard's primary; the cursor carries the shard (by position and name) and the node that answered. */
  | 'scan'
  /** Keyless reads answered by one shard, trying the next when one has nothing (RANDOMKEY). */
  | 'first-non-empty'
  /** EVAL / EVALSHA: routed by keys; scripts are remembered so NOSCRIPT is healed on any shard. */
  | 'script'
  /** CONFIG SET: every node of every shard, for an allow-list of parameters. */
  | 'config-set'
  /** INFO: the proxy's own section, then the shards' merged into one server's (counters added up; clients, port and ROLE the proxy's; cluster enabled); a shard silent for 1 s is named, not waited for. */
  | 'info'
  /**
   * SCRIPT KILL, FUNCTION KILL: every shard's primary and readable replica, each on a connection
   * of its own (the shared one waits behind the running script); +OK when one of them killed it.
   */
  | 'kill-script'
  /** Refused with `-ERR command 'x' is not allowed through slotproxy`. */
  | 'refused';

/** How the replies of a split or broadcast command become one reply (Redis's response_policy). */
export type Merge =
  /** MGET: array items put back in key order. */
  | 'mget'
  /** Integer replies added (DEL, EXISTS, DBSIZE: agg_sum). */
  | 'sum'
  /** +OK when every piece answered +OK (all_succeeded). */
  | 'all-ok'
  /** Every piece succeeded; the first piece's reply is the reply (SCRIPT LOAD's sha). */
  | 'first'
  /** Arrays concatenated (KEYS). */
  | 'union'
  /** Arrays of 0/1 ANDed element by element (SCRIPT EXISTS: agg_logical_and). */
  | 'logical-and'
  /** [name, count, ...] pairs with the counts added per name (PUBSUB NUMSUB). */
  | 'pair-sum'
  /** The same array everywhere; distinct items kept once (PUBSUB CHANNELS). */
  | 'distinct-union'
  /** Log entries of every shard, newest first by their timestamp, as many as asked (SLOWLOG GET). */
  | 'newest-first'
  /** [event, time, latest ms, max ms] per event over every shard: the latest spike's time and size, the greatest max (LATENCY LATEST). */
  | 'latest-per-event';

export interface CommandSpec {
  /** Dense number of the spec, for per-command counters in arrays. */
  readonly id: number;
  /** Lowercase command name; `name|sub` for a subcommand. */
  readonly name: string;
  readonly handling: Handling;
  /** For split and broadcast. */
  readonly merge: Merge | null;
  /** Argument index of the first key; 0 when keyless. */
  readonly firstKey: number;
  /** Index of the last key; negative counts from the end (-1 = last argument). */
  readonly lastKey: number;
  /** Distance between keys (2 for MSET's key value pairs). */
  readonly keyStep: number;
  /** Keys found by parsing arguments (EVAL numkeys, XREAD STREAMS...). */
  readonly hasMovableKeys: boolean;
  readonly isReadonly: boolean;
  readonly isWrite: boolean;
  /** Redis's arity: exact when positive, a minimum when negative. */
  readonly arity: number;
  /** Why it is refused, for docs/commands.md. */
  readonly note: string;
  /** Per-subcommand specs, keyed by lowercase subcommand name. */
  readonly subcommands: ReadonlyMap<string, CommandSpec> | null;
}
