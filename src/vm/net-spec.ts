// `--net tap=NAME[,mac=MAC][,mtu=N][,queues=N][,netns=NS]` and
// `--net switch=PATH[,mac=MAC][,mtu=N][,queues=N]`: what a NIC on the command line asks for,
// validated before anything is opened.

export type NetSpec =
  | { kind: 'tap'; name: string; netns?: string; mac?: Uint8Array; mtu?: number; queues?: number }
  | { kind: 'switch'; path: string; mac?: Uint8Array; mtu?: number; queues?: number };

export class NetSpecError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'NetSpecError';
  }
}

/** The largest MTU NetVSP offers (jumbo frames of 9000 bytes, as Hyper-V does). */
export const MAX_MTU = 9000;
const MIN_MTU = 68;
const IFNAME = /^[A-Za-z0-9_.-]{1,15}$/;

export function parseNetSpec(text: string): NetSpec {
  const [head = '', ...options] = text.split(',');
  const eq = head.indexOf('=');
  const kind = eq < 0 ? head : head.slice(0, eq);
  const value = eq < 0 ? '' : head.slice(eq + 1);
  let spec: NetSpec;
  if (kind === 'tap') {
    if (!IFNAME.test(value)) throw new NetSpecError(`'${text}': tap=NAME needs an interface name of 1-15 letters, digits, '.', '-' or '_'`);
    spec = { kind: 'tap', name: value };
  } else if (kind === 'switch') {
    if (value === '') throw new NetSpecError(`'${text}': switch=PATH needs the hub's socket path (see 'enlighten switch')`);
    spec = { kind: 'switch', path: value };
  } else {
    throw new NetSpecError(`'${text}': use tap=NAME[,mac=MAC][,mtu=N][,queues=N][,netns=NS] or switch=PATH[,mac=MAC][,mtu=N][,queues=N]`);
  }
  for (const option of options) {
    const at = option.indexOf('=');
    const key = at < 0 ? option : option.slice(0, at);
    const v = at < 0 ? '' : option.slice(at + 1);
    switch (key) {
      case 'mac': spec.mac = parseMac(v); break;
      case 'mtu': spec.mtu = integer(v, MIN_MTU, MAX_MTU, 'mtu'); break;
      case 'queues': spec.queues = integer(v, 1, 64, 'queues'); break;
      case 'netns':
        if (spec.kind !== 'tap') throw new NetSpecError(`'${text}': netns= is for tap NICs`);
        if (!IFNAME.test(v) && !/^[A-Za-z0-9_.-]{1,64}$/.test(v)) throw new NetSpecError(`'${text}': bad namespace name '${v}'`);
        spec.netns = v;
        break;
      default: throw new NetSpecError(`'${text}': unknown option '${key}' (mac, mtu, queues${spec.kind === 'tap' ? ', netns' : ''})`);
    }
  }
  return spec;
}

export function parseMac(text: string): Uint8Array {
  const parts = text.split(/[:-]/);
  if (parts.length !== 6 || parts.some((p) => !/^[0-9a-fA-F]{2}$/.test(p))) throw new NetSpecError(`'${text}' is not a MAC address like 00:15:5d:01:02:03`);
  const mac = Uint8Array.from(parts.map((p) => parseInt(p, 16)));
  if ((mac[0]! & 1) !== 0) throw new NetSpecError(`'${text}' is a multicast address; a NIC needs a unicast one`);
  return mac;
}

export function formatMac(mac: Uint8Array): string {
  return [...mac].map((b) => b.toString(16).padStart(2, '0')).join(':');
}

/** A MAC in Hyper-V's range (00:15:5d), different per process and NIC. */
export function defaultMac(index: number): Uint8Array {
  const seed = (process.pid * 2654435761 + index * 40503) >>> 0;
  return Uint8Array.from([0x00, 0x15, 0x5d, (seed >>> 16) & 0xff, (seed >>> 8) & 0xff, ((seed & 0xf0) | (index & 0x0f)) & 0xff]);
}

function integer(text: string, min: number, max: number, name: string): number {
  const n = Number(text);
  if (!Number.isInteger(n) || n < min || n > max) throw new NetSpecError(`${name} must be a whole number from ${min} to ${max}, not '${text}'`);
  return n;
}
