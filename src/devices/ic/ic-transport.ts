// The one thing an integration component needs from the VMBus channel layer: a way to
// put an in-band packet on the ring. Everything IC-specific (pipe header, icmsg header,
// negotiation) lives above this line, so host services and guest drivers can be tested
// against an in-memory pair as easily as against real rings.

/** One VMBus channel as an IC sees it: in-band packets (type 6), in both directions. */
export interface IcTransport {
  /**
   * Sends one in-band packet carrying `payload` (copied before return). The host side picks
   * the transaction id; the guest side replies with the transaction id of the request it
   * answers.
   */
  send(payload: Uint8Array, transactionId: bigint): void;
}

/** Where ICs report refused input and other noteworthy events (one line each). */
export type IcLog = (msg: string) => void;

/** The default log: drop everything (callers that care pass their own). */
export const silentLog: IcLog = () => {};
