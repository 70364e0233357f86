// An integration service as a VMBus device: on open it serves the channel's rings on the
// host's control-plane thread (IC traffic is a few packets a second) and hands in-band
// packets to the service.
import type { Poller } from '../../sys/epoll.js';
import { PacketType } from '../../vmbus/packet.js';
import { RingChannel } from '../../vmbus/ring-channel.js';
import type { ChannelCounters, OpenChannel, VmbusDevice } from '../../vmbus/server/vmbus-device.js';
import { IC_MAX_PACKET_BYTES, type IcHostEndpoint } from './ic-endpoint.js';
import type { IcTransport } from './ic-transport.js';

export interface IcDeviceOptions<T extends IcHostEndpoint> {
  name: string;
  classId: string;
  instanceId: string;
  poller: Poller;
  create: (transport: IcTransport) => T;
  log?: (message: string) => void;
}

interface Session<T> {
  ring: RingChannel;
  service: T;
  token: number;
}

export class IcDevice<T extends IcHostEndpoint> implements VmbusDevice {
  readonly name: string;
  readonly classId: string;
  readonly instanceId: string;
  private session: Session<T> | null = null;
  private readonly log: (message: string) => void;

  constructor(private readonly options: IcDeviceOptions<T>) {
    this.name = options.name;
    this.classId = options.classId;
    this.instanceId = options.instanceId;
    this.log = options.log ?? (() => {});
  }

  /** The service of the open channel, or null while the guest has it closed. */
  get service(): T | null {
    return this.session?.service ?? null;
  }

  get ring(): RingChannel | null {
    return this.session?.ring ?? null;
  }

  counters(): ChannelCounters | null {
    return this.session?.ring.stats ?? null;
  }

  open(channel: OpenChannel): number {
    let service: T | null = null;
    const ring = new RingChannel({
      incoming: channel.incoming,
      outgoing: channel.outgoing,
      maxPacketBytes: IC_MAX_PACKET_BYTES,
      notifyPeer: () => channel.signalGuest(),
      onPacket: (packet, payload) => {
        if (packet.type !== PacketType.DataInband) {
          this.log(`${this.name}: ignored packet type ${packet.type}`);
          return;
        }
        service?.onPacket(payload, packet.transactionId);
      },
      onCorrupt: (error) => channel.fail(error.message),
    });
    service = this.options.create({
      send: (payload, transactionId) => {
        if (!ring.send(payload, transactionId)) this.log(`${this.name}: ring full, message dropped`);
      },
    });
    const token = this.options.poller.add(channel.guestSignal.fd, () => {
      channel.guestSignal.drain();
      ring.onSignal();
    });
    this.session = { ring, service, token };
    service.start();
    return 0;
  }

  close(_channel: OpenChannel): void {
    const session = this.session;
    if (!session) return;
    this.session = null;
    this.options.poller.remove(session.token);
    session.ring.shutdown();
    session.service.close();
  }
}
