// The one error a ring raises: the other side broke the ring protocol. Rings live in
// guest memory, so an index or descriptor that cannot be valid means a hostile or buggy
// peer; the owner of the channel catches this and closes that channel, nothing more.
export class RingCorruptError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'RingCorruptError';
  }
}
