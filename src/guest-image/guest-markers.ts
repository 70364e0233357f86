// The marker lines enlighten's /init prints on the serial console (see init-script.ts), as
// the host reads them: the guest is up, a fact it reports, the exit status of its command.
// The console is guest output, so a marker is only a claim: parse strictly, never trust
// it beyond what it says.

export type GuestMarker =
  | { kind: 'ready'; kernel: string }
  | { kind: 'report'; key: string; value: string }
  | { kind: 'exit'; status: number };

const READY = /^ENLIGHTEN-GUEST-READY(?: kernel=(\S*))?\s*$/;
const REPORT = /^ENLIGHTEN-REPORT ([A-Za-z0-9_.-]{1,64})=(.{0,4096})$/;
const EXIT = /^ENLIGHTEN-EXIT (\d{1,3})\s*$/;

export function parseGuestMarker(line: string): GuestMarker | null {
  // Kernel messages can share the line; the marker is what follows the last CR.
  const text = line.slice(line.lastIndexOf('\r') + 1);
  if (!text.startsWith('ENLIGHTEN-')) return null;
  let m = READY.exec(text);
  if (m) return { kind: 'ready', kernel: m[1] ?? '' };
  m = REPORT.exec(text);
  if (m) return { kind: 'report', key: m[1]!, value: m[2]!.trimEnd() };
  m = EXIT.exec(text);
  if (m) {
    const status = Number(m[1]);
    return status <= 255 ? { kind: 'exit', status } : null;
  }
  return null;
}
