// Submits one request to a block backend and checks the completion contract: exactly
// once, never from inside the call, with the same io.
import type { BlockBackend, BlockDone, BlockIo } from '../../src/backends/block/block-backend.js';

export type BlockOpName = 'read' | 'write' | 'flush' | 'discard';

export function submitBlockIo(disk: BlockBackend, op: BlockOpName, io: BlockIo): Promise<number> {
  return new Promise((resolve, reject) => {
    let returned = false;
    let completed = false;
    const done: BlockDone = {
      blockDone(got, result) {
        if (completed) return reject(new Error('completed twice'));
        if (!returned) return reject(new Error('completed inside the call'));
        if (got !== io) return reject(new Error('completed with another io'));
        completed = true;
        resolve(result);
      },
    };
    disk[op](io, done);
    returned = true;
  });
}
