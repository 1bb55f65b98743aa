#!/usr/bin/env node
import cluster from 'node:cluster';
import { ConfigError, loadConfigFile } from './config/load-config';
import { StateFileError } from './control/state-file';
import { VERSION } from './cli/version';

const USAGE = `slotproxy ${VERSION}: one RESP endpoint over Redis shards split by hash slot

Usage:
  slotproxy start --config FILE    serve the topology in FILE
  slotproxy demo [--port 7000]     start 3 primaries + 3 replicas locally and serve them
  slotproxy create HOST:PORT... --replicas N [--out FILE] [--listen HOST:PORT] [--force] [--yes]
                                   wire blank redis-servers into shards and write the YAML
  slotproxy check --config FILE    slot coverage, roles, replication links, misplaced keys
  slotproxy reshard --from SHARD --to SHARD --slots N [--yes]
  slotproxy add-shard NAME PRIMARY [--replicas HOST:PORT,...] [--no-rebalance] [--yes]
  slotproxy remove-shard NAME [--yes]
  slotproxy rebalance [--weights SHARD=W,...] [--yes]
                                   move slots in a running proxy (found by --config FILE's
                                   admin: address, or --proxy HOST:PORT); plan, then progress
  slotproxy --version
`;

/** Reads `--name value` from argv. */
export function option(args: readonly string[], name: string): string | undefined {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
}

async function main(argv: readonly string[]): Promise<number> {
  const [command, ...args] = argv;
  if (cluster.isWorker) {
    // A worker of `workers: N`: its config and topology come from the primary (whose first
    // message arrives after this microtask has registered for it).
    const { runWorker } = await import('./cli/workers');
    runWorker();
    return -1;
  }
  switch (command) {
    case 'start': {
      const file = option(args, '--config');
      if (file === undefined) {
        process.stderr.write('slotproxy start: --config FILE is required\n');
        return 2;
      }
      const { runStart } = await import('./cli/start');
      await runStart(loadConfigFile(file));
      return -1;
    }
    case 'demo': {
      const { runDemo } = await import('./cli/demo');
      await runDemo(args);
      return -1;
    }
    case 'create': {
      const { runCreate } = await import('./cli/create');
      return runCreate(args);
    }
    case 'check': {
      const { runCheck } = await import('./cli/check');
      return runCheck(args);
    }
    case 'reshard':
    case 'add-shard':
    case 'remove-shard':
    case 'rebalance': {
      const { runResharding } = await import('./cli/resharding');
      return runResharding(command, args);
    }
    case '--version':
    case 'version':
      process.stdout.write(`${VERSION}\n`);
      return 0;
    case undefined:
    case '--help':
    case 'help':
      process.stdout.write(USAGE);
      return command === undefined ? 2 : 0;
    default:
      process.stderr.write(`slotproxy: unknown command '${command}'\n\n${USAGE}`);
      return 2;
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    if (code >= 0) process.exit(code);
  },
  (err: unknown) => {
    if (err instanceof ConfigError || err instanceof StateFileError) {
      process.stderr.write(`slotproxy: ${err.message}\n`);
      process.exit(78);
    }
    process.stderr.write(`slotproxy: ${(err as Error).stack ?? String(err)}\n`);
    process.exit(1);
  },
);
