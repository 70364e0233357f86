// A read-only MC146818 CMOS clock at ports 0x70/0x71. Linux reads the wall clock from it
// once at boot even when the FADT says "no CMOS RTC" (that flag only skips the rtc_cmos
// device); ports that float high would read as "update in progress" forever, or as a
// garbage date. Time sync (the Hyper-V IC) keeps the clock right afterwards.

export const CMOS_INDEX_PORT = 0x70;
export const CMOS_DATA_PORT = 0x71;

const REG_SECONDS = 0x00;
const REG_MINUTES = 0x02;
const REG_HOURS = 0x04;
const REG_WEEKDAY = 0x06;
const REG_DAY = 0x07;
const REG_MONTH = 0x08;
const REG_YEAR = 0x09;
const REG_A = 0x0a;
const REG_B = 0x0b;
const REG_C = 0x0c;
const REG_D = 0x0d;
const REG_CENTURY = 0x32;

const bcd = (n: number) => ((Math.floor(n / 10) % 10) << 4) | (n % 10);

export class CmosRtc {
  private index = 0;

  constructor(private readonly now: () => Date = () => new Date()) {}

  /** An OUT to 0x70: selects the register (bit 7 is the NMI mask, ignored). */
  selectRegister(value: number): void {
    this.index = value & 0x7f;
  }

  /** An IN from 0x71: the selected register. */
  read(): number {
    const t = this.now();
    switch (this.index) {
      case REG_SECONDS: return bcd(t.getUTCSeconds());
      case REG_MINUTES: return bcd(t.getUTCMinutes());
      case REG_HOURS: return bcd(t.getUTCHours());
      case REG_WEEKDAY: return bcd(t.getUTCDay() + 1);
      case REG_DAY: return bcd(t.getUTCDate());
      case REG_MONTH: return bcd(t.getUTCMonth() + 1);
      case REG_YEAR: return bcd(t.getUTCFullYear() % 100);
      case REG_CENTURY: return bcd(Math.floor(t.getUTCFullYear() / 100));
      case REG_A: return 0x26; // 32.768 kHz time base, 1024 Hz rate, no update in progress
      case REG_B: return 0x02; // 24-hour mode, BCD, no interrupts
      case REG_C: return 0x00;
      case REG_D: return 0x80; // valid RAM and time
      default: return 0x00;
    }
  }
}
