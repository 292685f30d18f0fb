import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';

/**
 * Hosts on this machine: one network namespace per host, each with a veth pair onto a bridge in
 * the root namespace, on a private /24 that the test makes up. The bridge has an address too, so
 * the test process (the operator's machine) reaches every host; nothing else is routed.
 */
export interface Hosts {
  /** Host name → its namespace and address. */
  hosts: Record<string, { netns: string; ip: string }>;
  /** The test process's own address on the bridge. */
  hostIp: string;
  /** `ip netns exec NS` for a host. */
  prefix(host: string): string[];
  /** Cut a host off the network (its link down) and bring it back. */
  unplug(host: string): void;
  remove(): void;
}

function ip(...args: string[]): void {
  execFileSync('ip', args, { stdio: ['ignore', 'ignore', 'pipe'] });
}

/** Why hosts cannot be built here, or null when they can (root, and `ip netns` works). */
export function netnsUnavailable(): string | null {
  if (process.getuid?.() !== 0) return 'network namespaces need root (run the scale tests as root, as CI does)';
  const probe = `dacp-probe-${randomBytes(3).toString('hex')}`;
  const add = spawnSync('ip', ['netns', 'add', probe], { encoding: 'utf8' });
  if (add.status !== 0) return `\`ip netns add\` failed: ${(add.stderr || add.error?.message || '').trim()}`;
  spawnSync('ip', ['netns', 'del', probe]);
  return null;
}

export function createHosts(names: string[]): Hosts {
  const tag = randomBytes(2).toString('hex');
  const subnet = `10.${200 + (parseInt(tag, 16) % 50)}.${parseInt(tag.slice(0, 2), 16)}`;
  const bridge = `dbr${tag}`;
  const hosts: Hosts['hosts'] = {};
  const cleanup: (() => void)[] = [];
  const remove = () => {
    for (const step of cleanup.reverse()) {
      try {
        step();
      } catch {
        // already gone
      }
    }
    cleanup.length = 0;
  };
  try {
    ip('link', 'add', bridge, 'type', 'bridge');
    cleanup.push(() => ip('link', 'del', bridge));
    ip('addr', 'add', `${subnet}.254/24`, 'dev', bridge);
    ip('link', 'set', bridge, 'up');
    names.forEach((name, i) => {
      const netns = `dacp-${name}-${tag}`;
      const outside = `dv${tag}${i}`;
      ip('netns', 'add', netns);
      cleanup.push(() => ip('netns', 'del', netns));
      // Whatever still runs on the host dies with it.
      cleanup.push(() => {
        const pids = spawnSync('ip', ['netns', 'pids', netns], { encoding: 'utf8' }).stdout.split(/\s+/).filter(Boolean);
        for (const pid of pids) spawnSync('kill', ['-9', pid]);
      });
      ip('link', 'add', outside, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', netns);
      cleanup.push(() => ip('link', 'del', outside));
      ip('link', 'set', outside, 'master', bridge);
      ip('link', 'set', outside, 'up');
      ip('-n', netns, 'addr', 'add', `${subnet}.${i + 1}/24`, 'dev', 'eth0');
      ip('-n', netns, 'link', 'set', 'eth0', 'up');
      ip('-n', netns, 'link', 'set', 'lo', 'up');
      hosts[name] = { netns, ip: `${subnet}.${i + 1}` };
    });
  } catch (err) {
    remove();
    throw err;
  }
  return {
    hosts,
    hostIp: `${subnet}.254`,
    prefix: (host) => ['ip', 'netns', 'exec', hosts[host].netns],
    unplug: (host) => ip('-n', hosts[host].netns, 'link', 'set', 'eth0', 'down'),
    remove,
  };
}
