// The two network namespaces of the network benchmark and the ways of joining them.
// G plays the guest (its kernel's TCP/IP stack and iperf3 are "the guest's"), H the host
// side. Each path puts one link into G and one into H with the same addresses, so the
// same iperf3 commands measure every path:
//   veth       a veth pair G <-> H: the kernel's own limit.
//   relay      a TAP in G and a TAP in H joined by TapRelay in this process: our floor.
//   enlighten  G's TAP is the reference netvsc's NIC (--expose-nics G), H's TAP is
//              NetVSP's TAP backend: supplied by the caller as an EnlightenPathStarter.
// Everything is created with unique names and removed by destroy(), which never throws
// and may run twice (from a finally block and a signal handler).
import { randomInt } from 'node:crypto';
import type { Poller } from '../src/sys/epoll.js';
import { addAddress, createNetns, deleteLink, deleteNetns, ip, moveLinkToNetns, setLinkUp, uniqueName } from '../src/sys/netns.js';
import { TapRelay } from './net-relay.js';

/** One side: a namespace and the address its link gets. */
export interface NetnsEnd {
  netns: string;
  /** e.g. 10.78.5.1 */
  address: string;
  /** e.g. 10.78.5.1/24 */
  cidr: string;
}

/** Stops a path and removes its links; may be called once. */
export type StopPath = () => void | Promise<void>;

/**
 * Joins G and H through enlighten. When the promise resolves, a link in guest.netns holds
 * guest.cidr and one in host.netns holds host.cidr, both up (configureLink does that for a
 * link name); the returned function tears it all down again (the namespaces stay).
 */
export type EnlightenPathStarter = (guest: NetnsEnd, host: NetnsEnd) => Promise<StopPath>;

export class BenchNamespaces {
  readonly guest: NetnsEnd;
  readonly host: NetnsEnd;
  private destroyed = false;

  private constructor(guest: NetnsEnd, host: NetnsEnd) {
    this.guest = guest;
    this.host = host;
  }

  /** Creates G and H (loopback up) on a random 10.78.N.0/24. */
  static create(): BenchNamespaces {
    const subnet = randomInt(1, 255);
    const guest = end(uniqueName('enbg'), `10.78.${subnet}.1`);
    const host = end(uniqueName('enbh'), `10.78.${subnet}.2`);
    const ns = new BenchNamespaces(guest, host);
    try {
      createNetns(guest.netns);
      createNetns(host.netns);
    } catch (e) {
      ns.destroy();
      throw e;
    }
    return ns;
  }

  /** Deletes both namespaces and every link in them. Never throws; idempotent. */
  destroy(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    deleteNetns(this.guest.netns);
    deleteNetns(this.host.netns);
  }
}

function end(netns: string, address: string): NetnsEnd {
  return { netns, address, cidr: `${address}/24` };
}

/** Gives a link already inside end.netns its address and brings it up. */
export function configureLink(e: NetnsEnd, link: string): void {
  addAddress(link, e.cidr, e.netns);
  setLinkUp(link, true, e.netns);
}

/** Path 1: a veth pair, one end in each namespace. */
export function startVethPath(ns: BenchNamespaces): StopPath {
  const g = uniqueName('envg');
  const h = uniqueName('envh');
  ip(['link', 'add', g, 'type', 'veth', 'peer', 'name', h]);
  try {
    moveLinkToNetns(g, ns.guest.netns);
    moveLinkToNetns(h, ns.host.netns);
    configureLink(ns.guest, g);
    configureLink(ns.host, h);
  } catch (e) {
    deleteLink(g);
    deleteLink(g, ns.guest.netns);
    throw e;
  }
  // Deleting one end removes the pair.
  return () => {
    deleteLink(g, ns.guest.netns);
  };
}

/** Path 2: a TAP in each namespace, relayed in this process by `poller`. */
export function startRelayPath(ns: BenchNamespaces, poller: Poller): { relay: TapRelay; stop: StopPath } {
  const relay = TapRelay.open({ poller, nameA: uniqueName('entg'), nameB: uniqueName('enth') });
  try {
    moveLinkToNetns(relay.a.name, ns.guest.netns);
    moveLinkToNetns(relay.b.name, ns.host.netns);
    configureLink(ns.guest, relay.a.name);
    configureLink(ns.host, relay.b.name);
  } catch (e) {
    relay.close();
    throw e;
  }
  // Closing the TAPs' fds removes the links from the namespaces.
  return { relay, stop: () => relay.close() };
}
