// The guest half of an integration component as a VMBus driver: probe opens the channel
// with hv_utils' ring sizes and feeds in-band packets to the IC driver.
import { IC_MAX_PACKET_BYTES, IC_RING_BYTES, type IcEndpoint } from '../../devices/ic/ic-endpoint.js';
import type { IcTransport } from '../../devices/ic/ic-transport.js';
import { PacketType } from '../../vmbus/packet.js';
import type { GuestChannel } from '../guest-channel.js';
import type { VmbusDriver } from '../vmbus-driver.js';

export interface IcVmbusDriverOptions<T extends IcEndpoint> {
  name: string;
  classId: string;
  create: (transport: IcTransport) => T;
}

export class IcVmbusDriver<T extends IcEndpoint> implements VmbusDriver {
  readonly name: string;
  readonly classId: string;
  readonly instances = new Map<number, T>();

  constructor(private readonly options: IcVmbusDriverOptions<T>) {
    this.name = options.name;
    this.classId = options.classId;
  }

  /** The driver instance of the (single) channel this driver is bound to. */
  get instance(): T | undefined {
    return this.instances.values().next().value;
  }

  async probe(channel: GuestChannel): Promise<void> {
    const instance = this.options.create({ send: (payload, transactionId) => void channel.send(payload, transactionId) });
    this.instances.set(channel.relid, instance);
    try {
      await channel.open({
        sendRingBytes: IC_RING_BYTES,
        receiveRingBytes: IC_RING_BYTES,
        maxPacketBytes: IC_MAX_PACKET_BYTES,
        onPacket: (packet, payload) => {
          if (packet.type === PacketType.DataInband) instance.onPacket(payload, packet.transactionId);
        },
      });
    } catch (e) {
      this.instances.delete(channel.relid);
      instance.close();
      throw e;
    }
  }

  async remove(channel: GuestChannel): Promise<void> {
    this.instances.get(channel.relid)?.close();
    this.instances.delete(channel.relid);
    await channel.close();
  }
}
