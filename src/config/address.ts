import { isIPv4, isIPv6 } from 'node:net';

import type { Address } from './config-types';

/** A `host:port` string that cannot be used as an address; the message says why. */
export class AddressError extends Error {
  override readonly name = 'AddressError';

  /** The text that failed to parse, as given. */
  readonly text: string;

  constructor(text: string, reason: string) {
    super(`${JSON.stringify(text)} ${reason}`);
    this.text = text;
  }
}

const MIN_PORT = 1;
const MAX_PORT = 65535;

// Letters, digits, dots, dashes and underscores: DNS names (plus the underscores seen in
// docker-compose service names) and dotted IPv4. Anything else is almost always a typo or a
// stray scheme such as `redis://`.
const HOSTNAME = /^[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?$/;
const DOTTED_NUMBERS = /^[0-9.]+$/;
const DIGITS = /^[0-9]+$/;

/**
 * Parses `host:port` or `[ipv6]:port`. IPv6 hosts come back without brackets.
 * @throws AddressError naming the text and what is wrong with it.
 */
export function parseAddress(text: string): Address {
  let host: string;
  let portText: string;
  if (text.startsWith('[')) {
    const close = text.indexOf(']');
    if (close === -1) throw new AddressError(text, 'has "[" without a closing "]"');
    host = text.slice(1, close);
    if (text[close + 1] !== ':') throw new AddressError(text, 'is not [ipv6]:port');
    portText = text.slice(close + 2);
    if (!isIPv6(host)) throw new AddressError(text, `has ${JSON.stringify(host)} in brackets, which is not an IPv6 address`);
  } else {
    const colon = text.lastIndexOf(':');
    if (colon === -1) throw new AddressError(text, 'is not host:port');
    host = text.slice(0, colon);
    portText = text.slice(colon + 1);
    // Without brackets the last colon of an IPv6 address is ambiguous with the port separator.
    if (host.includes(':')) throw new AddressError(text, 'is not host:port (write IPv6 hosts in brackets, e.g. [::1]:7001)');
    if (host === '') throw new AddressError(text, 'has no host');
    if (DOTTED_NUMBERS.test(host) ? !isIPv4(host) : !HOSTNAME.test(host)) {
      throw new AddressError(text, `has ${JSON.stringify(host)}, which is not a hostname or IP address`);
    }
  }
  if (!DIGITS.test(portText)) throw new AddressError(text, `has ${JSON.stringify(portText)}, which is not a port number`);
  const port = Number(portText);
  if (port < MIN_PORT || port > MAX_PORT) {
    throw new AddressError(text, `has port ${port}, which is not in ${MIN_PORT}..${MAX_PORT}`);
  }
  return { host, port };
}

/** `host:port`, with brackets around IPv6 hosts so the result parses back to the same address. */
export function formatAddress(address: Address): string {
  return address.host.includes(':') ? `[${address.host}]:${address.port}` : `${address.host}:${address.port}`;
}

/**
 * A string that is equal for equal addresses, for maps and uniqueness checks. It compares
 * the text as written: `localhost:7001` and `127.0.0.1:7001` are different keys.
 */
export function addressKey(address: Address): string {
  return formatAddress(address);
}
