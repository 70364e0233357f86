// What both halves of an integration component look like to the channel that carries
// them: packets in, and a close when the channel goes away.
export interface IcEndpoint {
  onPacket(payload: Uint8Array, transactionId: bigint): void;
  close(): void;
}

/** Host services also start the conversation (NEGOTIATE) once the channel is open. */
export interface IcHostEndpoint extends IcEndpoint {
  start(): void;
}

/** Linux's hv_util rings: three data pages plus the header page, each direction. */
export const IC_RING_BYTES = 4 * 4096;
/** The largest IC packet either side accepts (hv_kvp's receive buffer). */
export const IC_MAX_PACKET_BYTES = 16 * 1024;
