// SCSI operation codes, VPD page codes, sense keys and additional sense codes: the numbers
// of SPC-4 / SBC-3 that the disk emulation answers with. Additional sense codes are kept as
// one 16-bit value (ASC << 8 | ASCQ) so a result can be passed around without allocation.

export const ScsiOp = {
  TestUnitReady: 0x00,
  RequestSense: 0x03,
  Read6: 0x08,
  Write6: 0x0a,
  Inquiry: 0x12,
  ModeSelect6: 0x15,
  ModeSense6: 0x1a,
  StartStopUnit: 0x1b,
  PreventAllowMediumRemoval: 0x1e,
  ReadCapacity10: 0x25,
  Read10: 0x28,
  Write10: 0x2a,
  Verify10: 0x2f,
  SynchronizeCache10: 0x35,
  WriteSame10: 0x41,
  Unmap: 0x42,
  ModeSelect10: 0x55,
  ModeSense10: 0x5a,
  Read16: 0x88,
  Write16: 0x8a,
  Verify16: 0x8f,
  SynchronizeCache16: 0x91,
  WriteSame16: 0x93,
  /** SERVICE ACTION IN(16); READ CAPACITY(16) is its service action 0x10. */
  ServiceActionIn16: 0x9e,
  ReportLuns: 0xa0,
  Read12: 0xa8,
  Write12: 0xaa,
  Verify12: 0xaf,
} as const;

/** SERVICE ACTION IN(16) service actions (CDB byte 1, low five bits). */
export const ServiceAction = {
  ReadCapacity16: 0x10,
} as const;

/** Vital product data pages (INQUIRY with EVPD). */
export const VpdPage = {
  SupportedPages: 0x00,
  UnitSerialNumber: 0x80,
  DeviceIdentification: 0x83,
  BlockLimits: 0xb0,
  BlockDeviceCharacteristics: 0xb1,
  LogicalBlockProvisioning: 0xb2,
} as const;

export const SenseKey = {
  NoSense: 0x00,
  RecoveredError: 0x01,
  NotReady: 0x02,
  MediumError: 0x03,
  HardwareError: 0x04,
  IllegalRequest: 0x05,
  UnitAttention: 0x06,
  DataProtect: 0x07,
  AbortedCommand: 0x0b,
} as const;

/** Additional sense code and qualifier, as (ASC << 8) | ASCQ. */
export const Asc = {
  NoAdditionalSense: 0x0000,
  WriteError: 0x0c00,
  UnrecoveredReadError: 0x1100,
  ParameterListLengthError: 0x1a00,
  InvalidCommandOperationCode: 0x2000,
  LbaOutOfRange: 0x2100,
  InvalidFieldInCdb: 0x2400,
  InvalidFieldInParameterList: 0x2600,
  WriteProtected: 0x2700,
  SpaceAllocationFailedWriteProtect: 0x2707,
  CapacityDataHasChanged: 0x2a09,
  InternalTargetFailure: 0x4400,
} as const;

/** Standard INQUIRY byte 0: peripheral qualifier (bits 7..5) and device type (bits 4..0). */
export const Peripheral = {
  /** Qualifier 0, direct-access block device. */
  DirectAccessDisk: 0x00,
  /** Qualifier 3 (no device can be attached at this LUN), type 0x1F (unknown). */
  NoLogicalUnit: 0x7f,
} as const;
