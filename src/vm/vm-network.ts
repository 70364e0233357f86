// A VM's NICs: each `--net` spec becomes a backend (a TAP device, or a port on a switch
// hub) behind its own synthetic NIC (NetVSP), offered to the guest on VMBus. Link state
// changes from the host (CLI/API) reach the guest as RNDIS status indications.
import { TapBackend } from '../backends/net/tap-backend.js';
import { SwitchBackend } from '../backends/net/switch-backend.js';
import type { NetBackend } from '../backends/net/net-backend.js';
import { NetvspDevice } from '../devices/netvsp/netvsp-device.js';
import { moveLinkToNetns, setLinkMtu, setLinkUp } from '../sys/netns.js';
import type { Poller } from '../sys/epoll.js';
import type { VmbusServer } from '../vmbus/server/vmbus-server.js';
import { defaultMac, formatMac, type NetSpec } from './net-spec.js';

export interface AttachedNic {
  index: number;
  kind: NetSpec['kind'];
  /** The TAP's name or the hub's socket path. */
  target: string;
  mac: string;
  mtu: number;
  queues: number;
  linkUp: boolean;
  /** Per channel (0 = primary, then sub-channels): frames each way, for inspect and tests. */
  channels?: { subChannelIndex: number; txFrames: number; rxFrames: number; rxCoalesced: number; txDropped: number; rxDropped: number }[];
  /** What the backend passed on: frames the guest sent, and those that went out as whole large segments (TSO). */
  backend?: { txFrames: number; txLargeFrames: number; txLargestFrame: number; rxFrames: number };
}

export interface VmNetworkOptions {
  poller: Poller;
  server: VmbusServer;
  cpus: number;
  log?: (message: string) => void;
}

interface Nic {
  info: AttachedNic;
  device: NetvspDevice;
  backend: NetBackend;
}

export class VmNetwork {
  private readonly nics: Nic[] = [];

  constructor(private readonly options: VmNetworkOptions) {}

  /** Opens the backend and offers a NIC for it; the guest sees it at once. */
  add(spec: NetSpec): AttachedNic {
    const index = this.nics.length;
    const mac = spec.mac ?? defaultMac(index);
    const mtu = spec.mtu ?? 1500;
    const queues = Math.min(spec.queues ?? this.options.cpus, this.options.cpus);
    const backend = this.openBackend(spec, mtu);
    try {
      const device = new NetvspDevice({
        poller: this.options.poller,
        backend,
        mac,
        mtu,
        maxQueues: queues,
        instance: index,
        offerSubchannel: (d, subIndex) => {
          if (!this.options.server.hasSubchannel(d, subIndex)) this.options.server.addSubchannel(d, subIndex);
        },
        log: this.options.log,
      });
      this.options.server.addDevice(device);
      const info: AttachedNic = { index, kind: spec.kind, target: spec.kind === 'tap' ? spec.name : spec.path, mac: formatMac(mac), mtu, queues, linkUp: true };
      this.nics.push({ info, device, backend });
      return info;
    } catch (e) {
      backend.close();
      throw e;
    }
  }

  list(): AttachedNic[] {
    return this.nics.map((n) => ({
      ...n.info,
      channels: n.device.stats().channels.map((c) => ({ subChannelIndex: c.subChannelIndex, txFrames: c.txFrames, rxFrames: c.rxFrames, rxCoalesced: c.rxCoalesced, txDropped: c.txDropped, rxDropped: c.rxDropped })),
      backend: { txFrames: n.backend.stats.txFrames, txLargeFrames: n.backend.stats.txLargeFrames ?? 0, txLargestFrame: n.backend.stats.txLargestFrame ?? 0, rxFrames: n.backend.stats.rxFrames },
    }));
  }

  /** Link up/down as the guest sees it (the cable), for one NIC or all. */
  setLink(up: boolean, index?: number): AttachedNic[] {
    const chosen = index === undefined ? this.nics : [this.nic(index)];
    for (const nic of chosen) {
      nic.device.setLinkUp(up);
      nic.backend.setLinkUp(up);
      nic.info.linkUp = up;
    }
    return chosen.map((n) => ({ ...n.info }));
  }

  /** The NetVSP device of a NIC (tests, inspect). */
  device(index: number): NetvspDevice {
    return this.nic(index).device;
  }

  close(): void {
    for (const nic of this.nics.splice(0)) {
      nic.device.close();
      nic.backend.close();
    }
  }

  private nic(index: number): Nic {
    const nic = this.nics[index];
    if (!nic) throw new Error(`no NIC ${index} (this VM has ${this.nics.length})`);
    return nic;
  }

  private openBackend(spec: NetSpec, mtu: number): NetBackend {
    if (spec.kind === 'switch') return SwitchBackend.connect({ poller: this.options.poller, path: spec.path, mtu });
    const backend = TapBackend.open({ poller: this.options.poller, name: spec.name, mtu });
    try {
      // The host end of the cable: in the namespace asked for, with the NIC's MTU, up.
      if (spec.netns) moveLinkToNetns(spec.name, spec.netns);
      setLinkMtu(spec.name, mtu, spec.netns);
      setLinkUp(spec.name, true, spec.netns);
    } catch (e) {
      backend.close();
      throw e;
    }
    return backend;
  }
}
