export type LogLevel = 'debug' | 'info' | 'warn' | 'error';

const RANK: Readonly<Record<LogLevel, number>> = { debug: 10, info: 20, warn: 30, error: 40 };

/** Fields of one log line; never put secrets here. */
export type LogFields = Readonly<Record<string, string | number | boolean | null | undefined | readonly (string | number)[]>>;

/** One JSON object per line on stderr: {level, time, event, ...fields}. */
export class Logger {
  #level: LogLevel;
  readonly #base: LogFields;

  constructor(level: LogLevel = 'info', base: LogFields = {}) {
    this.#level = level;
    this.#base = base;
  }

  setLevel(level: LogLevel): void {
    this.#level = level;
  }

  child(base: LogFields): Logger {
    return new Logger(this.#level, { ...this.#base, ...base });
  }

  debug(event: string, fields?: LogFields): void {
    this.#write('debug', event, fields);
  }

  info(event: string, fields?: LogFields): void {
    this.#write('info', event, fields);
  }

  warn(event: string, fields?: LogFields): void {
    this.#write('warn', event, fields);
  }

  error(event: string, fields?: LogFields): void {
    this.#write('error', event, fields);
  }

  #write(level: LogLevel, event: string, fields: LogFields | undefined): void {
    if (RANK[level] < RANK[this.#level]) return;
    process.stderr.write(`${JSON.stringify({ level, time: new Date().toISOString(), event, ...this.#base, ...fields })}\n`);
  }
}

export const log = new Logger((process.env.SLOTPROXY_LOG_LEVEL as LogLevel | undefined) ?? 'info');
