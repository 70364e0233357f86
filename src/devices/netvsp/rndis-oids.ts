// NDIS object identifiers (OIDs) carried in RNDIS QUERY and SET, with names for logs
// (spec 2.6; Linux include/linux/rndis.h and drivers/net/hyperv/hyperv_net.h). The
// bring-up list says which OIDs Linux uses, in its order, and how long an answer it
// accepts: a longer answer is treated as failure.

export const Oid = {
  // General, required
  GEN_SUPPORTED_LIST: 0x00010101,
  GEN_HARDWARE_STATUS: 0x00010102,
  GEN_MEDIA_SUPPORTED: 0x00010103,
  GEN_MEDIA_IN_USE: 0x00010104,
  GEN_MAXIMUM_LOOKAHEAD: 0x00010105,
  GEN_MAXIMUM_FRAME_SIZE: 0x00010106,
  GEN_LINK_SPEED: 0x00010107,
  GEN_TRANSMIT_BUFFER_SPACE: 0x00010108,
  GEN_RECEIVE_BUFFER_SPACE: 0x00010109,
  GEN_TRANSMIT_BLOCK_SIZE: 0x0001010a,
  GEN_RECEIVE_BLOCK_SIZE: 0x0001010b,
  GEN_VENDOR_ID: 0x0001010c,
  GEN_VENDOR_DESCRIPTION: 0x0001010d,
  GEN_CURRENT_PACKET_FILTER: 0x0001010e,
  GEN_CURRENT_LOOKAHEAD: 0x0001010f,
  GEN_DRIVER_VERSION: 0x00010110,
  GEN_MAXIMUM_TOTAL_SIZE: 0x00010111,
  GEN_PROTOCOL_OPTIONS: 0x00010112,
  GEN_MAC_OPTIONS: 0x00010113,
  GEN_MEDIA_CONNECT_STATUS: 0x00010114,
  GEN_MAXIMUM_SEND_PACKETS: 0x00010115,
  GEN_VENDOR_DRIVER_VERSION: 0x00010116,
  GEN_SUPPORTED_GUIDS: 0x00010117,
  GEN_NETWORK_LAYER_ADDRESSES: 0x00010118,
  GEN_TRANSPORT_HEADER_OFFSET: 0x00010119,
  GEN_MEDIA_CAPABILITIES: 0x00010201,
  GEN_PHYSICAL_MEDIUM: 0x00010202,
  GEN_RECEIVE_SCALE_CAPABILITIES: 0x00010203,
  GEN_RECEIVE_SCALE_PARAMETERS: 0x00010204,
  GEN_MACHINE_NAME: 0x0001021a,
  GEN_RNDIS_CONFIG_PARAMETER: 0x0001021b,
  GEN_VLAN_ID: 0x0001021c,
  // General statistics
  GEN_XMIT_OK: 0x00020101,
  GEN_RCV_OK: 0x00020102,
  GEN_XMIT_ERROR: 0x00020103,
  GEN_RCV_ERROR: 0x00020104,
  GEN_RCV_NO_BUFFER: 0x00020105,
  GEN_DIRECTED_BYTES_XMIT: 0x00020201,
  GEN_DIRECTED_FRAMES_XMIT: 0x00020202,
  GEN_MULTICAST_BYTES_XMIT: 0x00020203,
  GEN_MULTICAST_FRAMES_XMIT: 0x00020204,
  GEN_BROADCAST_BYTES_XMIT: 0x00020205,
  GEN_BROADCAST_FRAMES_XMIT: 0x00020206,
  GEN_DIRECTED_BYTES_RCV: 0x00020207,
  GEN_DIRECTED_FRAMES_RCV: 0x00020208,
  GEN_MULTICAST_BYTES_RCV: 0x00020209,
  GEN_MULTICAST_FRAMES_RCV: 0x0002020a,
  GEN_BROADCAST_BYTES_RCV: 0x0002020b,
  GEN_BROADCAST_FRAMES_RCV: 0x0002020c,
  GEN_RCV_CRC_ERROR: 0x0002020d,
  GEN_TRANSMIT_QUEUE_LENGTH: 0x0002020e,
  GEN_FRIENDLY_NAME: 0x00020216,
  // IEEE 802.3
  '802_3_PERMANENT_ADDRESS': 0x01010101,
  '802_3_CURRENT_ADDRESS': 0x01010102,
  '802_3_MULTICAST_LIST': 0x01010103,
  '802_3_MAXIMUM_LIST_SIZE': 0x01010104,
  '802_3_MAC_OPTIONS': 0x01010105,
  OFFLOAD_ENCAPSULATION: 0x0101010a,
  '802_3_RCV_ERROR_ALIGNMENT': 0x01020101,
  '802_3_XMIT_ONE_COLLISION': 0x01020102,
  '802_3_XMIT_MORE_COLLISIONS': 0x01020103,
  // NDIS 6 task offload
  TCP_OFFLOAD_CURRENT_CONFIG: 0xfc01020b,
  TCP_OFFLOAD_PARAMETERS: 0xfc01020c,
  TCP_OFFLOAD_HARDWARE_CAPABILITIES: 0xfc01020d,
  TCP_CONNECTION_OFFLOAD_CURRENT_CONFIG: 0xfc01020e,
  TCP_CONNECTION_OFFLOAD_HARDWARE_CAPABILITIES: 0xfc01020f,
  // Power management
  PNP_CAPABILITIES: 0xfd010100,
  PNP_SET_POWER: 0xfd010101,
  PNP_QUERY_POWER: 0xfd010102,
  PNP_ADD_WAKE_UP_PATTERN: 0xfd010103,
  PNP_REMOVE_WAKE_UP_PATTERN: 0xfd010104,
  PNP_ENABLE_WAKE_UP: 0xfd010106,
} as const;

export type OidName = keyof typeof Oid;

const NAMES = new Map<number, string>();
for (const [name, value] of Object.entries(Oid)) NAMES.set(value, `OID_${name}`);

/** `OID_GEN_LINK_SPEED` style, or `OID 0x12345678` for one this table does not know. */
export function oidName(oid: number): string {
  return NAMES.get(oid >>> 0) ?? `OID 0x${(oid >>> 0).toString(16).padStart(8, '0')}`;
}

/** What Linux does with an OID during bring-up (spec 2.6), in its order. */
export interface LinuxOidUse {
  oid: number;
  request: 'query' | 'set';
  /** Longest information buffer the guest accepts in the answer (queries only). */
  maxAnswerLength?: number;
  /** Linux fails the probe if this request fails. */
  required: boolean;
  /** Only from this NVSP version (5 = 0x50000). */
  minNvspVersion?: number;
}

export const LINUX_BRINGUP_OIDS: readonly LinuxOidUse[] = [
  { oid: Oid.GEN_MAXIMUM_FRAME_SIZE, request: 'query', maxAnswerLength: 4, required: false },
  { oid: Oid['802_3_PERMANENT_ADDRESS'], request: 'query', maxAnswerLength: 6, required: true },
  { oid: Oid.GEN_FRIENDLY_NAME, request: 'query', maxAnswerLength: 512, required: false },
  { oid: Oid.TCP_OFFLOAD_HARDWARE_CAPABILITIES, request: 'query', maxAnswerLength: 156, required: true },
  { oid: Oid.TCP_OFFLOAD_PARAMETERS, request: 'set', required: true },
  { oid: Oid.GEN_MEDIA_CONNECT_STATUS, request: 'query', maxAnswerLength: 4, required: false },
  { oid: Oid.GEN_LINK_SPEED, request: 'query', maxAnswerLength: 4, required: false, minNvspVersion: 0x50000 },
  { oid: Oid.GEN_RECEIVE_SCALE_CAPABILITIES, request: 'query', maxAnswerLength: 18, required: false, minNvspVersion: 0x50000 },
];

/** Longest answer Linux accepts per queried OID (spec 2.6); undefined where it has no fixed limit. */
export function linuxMaxAnswerLength(oid: number): number | undefined {
  for (const u of LINUX_BRINGUP_OIDS) if (u.oid === oid && u.request === 'query') return u.maxAnswerLength;
  return undefined;
}
