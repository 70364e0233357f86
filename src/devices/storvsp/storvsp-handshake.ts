// The storvsc initialization handshake as the host sees it (spec 1.3; Linux
// storvsc_channel_init / storvsc_connect_to_vsp): BEGIN_INITIALIZATION, one or more
// QUERY_PROTOCOL_VERSION probes, QUERY_PROPERTIES, END_INITIALIZATION, then I/O and
// (primary only) CREATE_SUB_CHANNELS. Each step answers with the NTSTATUS for the
// COMPLETE_IO reply; a step out of order gets INVALID_DEVICE_STATE so the guest fails
// fast instead of waiting 180 s. Pure state: the channel does the ring work.
import { NtStatus, STORAGE_CHANNEL_SUPPORTS_MULTI_CHANNEL, VstorVersion } from './storvsp-protocol.js';

export const HandshakeState = {
  AwaitBegin: 0,
  AwaitVersion: 1,
  AwaitProperties: 2,
  AwaitEnd: 3,
  Ready: 4,
} as const;
export type HandshakeState = (typeof HandshakeState)[keyof typeof HandshakeState];

/**
 * Versions this host speaks, newest first. All use the Win8+ 52-byte SRB that Linux 6.1
 * sends; the pre-Win8 forms (2.0, 4.2) with their shorter packets are not offered.
 */
export const SUPPORTED_VERSIONS: readonly number[] = [VstorVersion.Win10, VstorVersion.Win8_1, VstorVersion.Win8];

export interface HandshakeConfig {
  /** Highest version accepted (a lower one makes newer guests fall back). */
  maxVersion: number;
  /** Advertised max_channel_cnt; 0 clears the multi-channel flag. */
  maxSubchannels: number;
  maxTransferBytes: number;
}

export class StorvspHandshake {
  state: HandshakeState = HandshakeState.AwaitBegin;
  /** The negotiated version, 0 before QUERY_PROTOCOL_VERSION succeeded. */
  version = 0;

  constructor(private readonly config: HandshakeConfig) {}

  /** Back to the start (the guest opened the channel again: a driver reload). */
  reset(): void {
    this.state = HandshakeState.AwaitBegin;
    this.version = 0;
  }

  /** A sub-channel carries no handshake: it is ready for I/O once open, at the primary's version. */
  startReady(version: number): void {
    this.state = HandshakeState.Ready;
    this.version = version;
  }

  get ready(): boolean {
    return this.state === HandshakeState.Ready;
  }

  get multiChannelFlags(): number {
    return this.config.maxSubchannels > 0 ? STORAGE_CHANNEL_SUPPORTS_MULTI_CHANNEL : 0;
  }

  get maxSubchannels(): number {
    return this.config.maxSubchannels;
  }

  get maxTransferBytes(): number {
    return this.config.maxTransferBytes;
  }

  begin(): number {
    if (this.state !== HandshakeState.AwaitBegin) return NtStatus.InvalidDeviceState;
    this.state = HandshakeState.AwaitVersion;
    return NtStatus.Success;
  }

  /** A rejected version leaves the state as is, so the guest can offer the next one. */
  queryVersion(majorMinor: number): number {
    if (this.state !== HandshakeState.AwaitVersion) return NtStatus.InvalidDeviceState;
    if (majorMinor > this.config.maxVersion || !SUPPORTED_VERSIONS.includes(majorMinor)) return NtStatus.RevisionMismatch;
    this.version = majorMinor;
    this.state = HandshakeState.AwaitProperties;
    return NtStatus.Success;
  }

  queryProperties(): number {
    if (this.state !== HandshakeState.AwaitProperties) return NtStatus.InvalidDeviceState;
    this.state = HandshakeState.AwaitEnd;
    return NtStatus.Success;
  }

  end(): number {
    if (this.state !== HandshakeState.AwaitEnd) return NtStatus.InvalidDeviceState;
    this.state = HandshakeState.Ready;
    return NtStatus.Success;
  }

  /** CREATE_SUB_CHANNELS: only on the primary, only after END_INITIALIZATION, at most what was advertised. */
  createSubchannels(count: number, primary: boolean): number {
    if (!primary || this.state !== HandshakeState.Ready) return NtStatus.InvalidDeviceState;
    if (count < 1 || count > this.config.maxSubchannels) return NtStatus.InvalidParameter;
    return NtStatus.Success;
  }
}
