// Fixed-format sense data (SPC-4 4.5.3, response code 0x70): what storvsc hands to the SCSI
// midlayer when the SRB says autosense is valid. Linux reads the key at byte 2 and ASC/ASCQ
// at bytes 12/13.
import { ScsiStatus, type ScsiCommand } from './scsi-command.js';

export const FIXED_SENSE_BYTES = 18;

/**
 * Writes fixed sense (current error) into `target`, truncated to its length (the transport
 * sizes it; storvsc carries up to 20 bytes). `code` is (ASC << 8) | ASCQ. Returns the
 * number of bytes written.
 */
export function writeFixedSense(target: Uint8Array, senseKey: number, code: number): number {
  const length = Math.min(FIXED_SENSE_BYTES, target.length);
  for (let i = 0; i < length; i++) target[i] = 0;
  if (length > 0) target[0] = 0x70;
  if (length > 2) target[2] = senseKey & 0x0f;
  // Additional sense length: the bytes after byte 7 (18 - 8).
  if (length > 7) target[7] = FIXED_SENSE_BYTES - 8;
  if (length > 12) target[12] = (code >>> 8) & 0xff;
  if (length > 13) target[13] = code & 0xff;
  return length;
}

/** Fills the command's results as CHECK CONDITION with the given sense; nothing moved. */
export function setCheckCondition(command: ScsiCommand, senseKey: number, code: number): void {
  command.scsiStatus = ScsiStatus.CheckCondition;
  command.senseLength = writeFixedSense(command.sense, senseKey, code);
  command.bytesTransferred = 0;
}

/** Fills the command's results as GOOD with `bytesTransferred` bytes moved. */
export function setGood(command: ScsiCommand, bytesTransferred: number): void {
  command.scsiStatus = ScsiStatus.Good;
  command.senseLength = 0;
  command.bytesTransferred = bytesTransferred;
}
