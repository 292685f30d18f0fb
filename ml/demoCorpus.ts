/**
 * A deterministic demo corpus: telecom operations documents (the domain), everyday English (the replay
 * set) and telecom question/answer pairs (instruction tuning). Templated sentences with varied slots:
 * repetitive enough for a tiny character-level model to learn from, but no two documents alike, so
 * they all survive the quality stage, except a few deliberately bad ones that show it working.
 */

export interface DemoCorpus {
  domain: string[];
  general: string[];
  instructions: { prompt: string; response: string }[];
}

export interface DemoCorpusOptions {
  seed?: number;
  /** Generated domain documents, not counting the deliberate bad ones added among them. */
  domainDocs?: number;
  generalDocs?: number;
  instructionPairs?: number;
}

export const defaultDemoCorpusOptions: Required<DemoCorpusOptions> = {
  seed: 20240607,
  domainDocs: 340,
  generalDocs: 400,
  instructionPairs: 150,
};

/** The deliberate bad documents placed in `domain` (when domainDocs ≥ 1), and what the quality stage should make of them. */
export const demoQualityExpectations = {
  badDomainDocs: 3,
  duplicateOfIndex: 5,
  tooShortText: 'gNB restarted.',
  piiEmail: 'noc.oncall@example.com',
  piiPhone: '+1 555 010 4477',
  removed: { duplicate: 1, too_short: 1 },
  redactions: { email: 1, phone: 1, card: 0, ip: 0, national_id: 0 },
} as const;

/** mulberry32: a tiny seeded PRNG, so the same seed always yields the same corpus. */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

class Slots {
  constructor(private readonly random: () => number) {}
  int(min: number, max: number): number {
    return min + Math.floor(this.random() * (max - min + 1));
  }
  num(min: number, max: number, decimals: number): string {
    return (min + this.random() * (max - min)).toFixed(decimals);
  }
  pick<T>(items: readonly T[]): T {
    return items[Math.floor(this.random() * items.length)];
  }
  sample<T>(items: readonly T[], k: number): T[] {
    const pool = [...items];
    for (let i = pool.length - 1; i > 0; i--) {
      const j = Math.floor(this.random() * (i + 1));
      [pool[i], pool[j]] = [pool[j], pool[i]];
    }
    return pool.slice(0, Math.min(k, pool.length));
  }
  pad(n: number, width: number): string {
    return String(n).padStart(width, '0');
  }
}

type Template = (s: Slots) => string;

// ---------------------------------------------------------------- domain: telecom operations

const cities = ['SEL', 'PUS', 'ICN', 'DAE', 'GWJ', 'ULS', 'SUW', 'CHN', 'JEJ', 'ANY', 'BUC', 'GMP'];
const regions = ['north', 'south', 'east', 'west', 'central', 'coastal', 'airport', 'downtown'];
const bands = ['n78', 'n41', 'n28', 'n3', 'n1', 'n257', 'n77', 'n79'];
const alarms = ['NG link down', 'cell unavailable', 'VSWR over threshold', 'GPS synchronisation loss',
  'fan failure', 'board over temperature', 'RRU communication failure', 'Xn link failure',
  'licence capacity exceeded', 'clock drift beyond tolerance', 'fronthaul CPRI link degraded', 'power supply fault'];
const causes = ['a loose fibre connector on the fronthaul', 'a failed power supply unit in the baseband cabinet',
  'a misconfigured neighbour relation', 'water ingress in the antenna jumper', 'an expired transport certificate',
  'a firmware fault in the radio unit', 'congestion on the backhaul router', 'a wrong PCI assignment causing a collision',
  'a blocked air filter in the outdoor cabinet', 'a software upgrade that reset the timing source'];
const actions = ['replaced the SFP module', 'reseated the fronthaul fibre', 'rolled back the radio unit firmware',
  'corrected the neighbour list', 'reset the baseband board', 'renewed the transport certificate',
  'cleaned the cabinet air filter', 'reassigned the PCI', 'restored the GPS antenna cable', 'swapped the power supply unit'];
const kpis = ['RRC setup success rate', 'QoS flow drop rate', 'handover success rate', 'PRB utilisation',
  'downlink user throughput', 'uplink user throughput', 'average CQI', 'downlink BLER', 'cell availability'];
const schedulers = ['proportional fair', 'round robin', 'max C/I', 'QoS-aware proportional fair'];
const engineers = ['field team Alpha', 'field team Bravo', 'the NOC shift lead', 'the RAN optimisation team',
  'the transport team', 'the core network team', 'the on-site technician'];

const site = (s: Slots): string => `gNB-${s.pick(cities)}-${s.pad(s.int(1, 999), 4)}`;
const cell = (s: Slots): string => `cell ${s.int(1, 6)}`;
const date = (s: Slots): string => `2024-${s.pad(s.int(1, 12), 2)}-${s.pad(s.int(1, 28), 2)}`;
const time = (s: Slots): string => `${s.pad(s.int(0, 23), 2)}:${s.pad(s.int(0, 59), 2)}`;

const domainKinds: { title: Template; body: Template[] }[] = [
  {
    title: (s) => `Fault ticket INC-${s.int(10000, 99999)}: ${s.pick(alarms)} at ${site(s)}`,
    body: [
      (s) => `The ticket was opened on ${date(s)} at ${time(s)} after the NOC received a critical ${s.pick(alarms)} alarm.`,
      (s) => `Severity was set to ${s.pick(['major', 'critical', 'minor'])} because ${s.int(2, 9)} cells on band ${s.pick(bands)} lost service.`,
      (s) => `About ${s.int(120, 4800)} active UEs were affected in the ${s.pick(regions)} cluster during the outage.`,
      (s) => `The first check on site showed ${s.pick(causes)}.`,
      (s) => `${cap(s.pick(engineers))} ${s.pick(actions)} and the alarm cleared after ${s.int(3, 95)} minutes.`,
      (s) => `Root cause was confirmed as ${s.pick(causes)}.`,
      (s) => `After the fix the ${s.pick(kpis)} returned to ${s.num(95, 99.9, 1)} % within ${s.int(1, 6)} hours.`,
      (s) => `A follow-up action asks ${s.pick(engineers)} to audit ${s.int(3, 40)} similar sites in the ${s.pick(regions)} region.`,
      (s) => `The ticket was closed on ${date(s)} with resolution code R${s.int(10, 99)}.`,
      (s) => `Neighbouring ${site(s)} absorbed part of the traffic, and its PRB utilisation peaked at ${s.int(70, 99)} %.`,
    ],
  },
  {
    title: (s) => `Alarm digest for the ${s.pick(regions)} cluster, ${date(s)}`,
    body: [
      (s) => `${site(s)} raised ${s.int(2, 30)} ${s.pick(alarms)} alarms between ${time(s)} and ${time(s)}.`,
      (s) => `The ${s.pick(alarms)} alarm on ${site(s)} ${cell(s)} flapped ${s.int(3, 25)} times and is now suppressed.`,
      (s) => `Correlation grouped ${s.int(4, 60)} alarms into ${s.int(1, 5)} incidents, most of them caused by ${s.pick(causes)}.`,
      (s) => `A ${s.pick(alarms)} alarm was cleared automatically after ${s.int(1, 20)} minutes on ${site(s)}.`,
      (s) => `No service impact was seen on band ${s.pick(bands)}, but ${s.pick(engineers)} will check the site on ${date(s)}.`,
      (s) => `Total active alarms in the cluster fell from ${s.int(40, 90)} to ${s.int(5, 39)} during the shift.`,
      (s) => `The oldest open alarm is ${s.pick(alarms)} on ${site(s)}, raised ${s.int(2, 14)} days ago.`,
      (s) => `Two alarms of type ${s.pick(alarms)} were escalated to ${s.pick(engineers)}.`,
    ],
  },
  {
    title: (s) => `Weekly KPI report, ${s.pick(regions)} cluster, week ${s.int(1, 52)}`,
    body: [
      (s) => `The ${s.pick(kpis)} averaged ${s.num(90, 99.9, 2)} % against a target of ${s.num(95, 99.5, 1)} %.`,
      (s) => `Downlink user throughput reached ${s.num(80, 650, 1)} Mbps at the busy hour on band ${s.pick(bands)}.`,
      (s) => `Uplink user throughput stayed near ${s.num(8, 90, 1)} Mbps while PRB utilisation was ${s.int(30, 95)} %.`,
      (s) => `The worst cell was ${site(s)} ${cell(s)}, where the ${s.pick(kpis)} dropped to ${s.num(70, 94, 1)} %.`,
      (s) => `Average CQI improved from ${s.num(7, 10, 1)} to ${s.num(10, 13, 1)} after the antenna tilt change on ${date(s)}.`,
      (s) => `The handover success rate was ${s.num(96, 99.9, 2)} % with ${s.int(1, 9)} ping-pong events per thousand handovers.`,
      (s) => `Cell availability was ${s.num(99, 99.99, 2)} % across ${s.int(40, 400)} cells in the cluster.`,
      (s) => `Median RSRP at the cell edge was ${s.int(-118, -95)} dBm and median SINR was ${s.int(-3, 12)} dB.`,
      (s) => `Traffic volume grew ${s.num(0.5, 9, 1)} % week over week, mostly on the ${s.pick(bands)} layer.`,
    ],
  },
  {
    title: (s) => `Handover optimisation note for ${site(s)}`,
    body: [
      (s) => `The A3 offset was changed from ${s.int(1, 3)} dB to ${s.int(3, 6)} dB on ${cell(s)} to reduce early handovers.`,
      (s) => `Time to trigger was raised to ${s.pick([80, 128, 160, 256, 320, 480])} ms because of ping-pong between ${cell(s)} and ${site(s)}.`,
      (s) => `Hysteresis of ${s.num(0.5, 3, 1)} dB keeps UEs on the serving cell when the neighbour is only slightly stronger.`,
      (s) => `The handover success rate moved from ${s.num(94, 97, 1)} % to ${s.num(97, 99.8, 1)} % after the change.`,
      (s) => `Radio link failures before handover fell by ${s.int(10, 60)} % over ${s.int(3, 14)} days.`,
      (s) => `Inter-frequency handover from ${s.pick(bands)} to ${s.pick(bands)} now starts below ${s.int(-115, -100)} dBm RSRP.`,
      (s) => `Conditional handover was enabled for ${s.int(2, 12)} cells along the ${s.pick(regions)} rail corridor.`,
      (s) => `The missing neighbour relation to ${site(s)} was added, which removed ${s.int(20, 300)} daily drops.`,
    ],
  },
  {
    title: (s) => `PRB scheduling analysis, ${site(s)} ${cell(s)}, band ${s.pick(bands)}`,
    body: [
      (s) => `The cell runs ${s.pick([20, 40, 60, 80, 100])} MHz with ${s.pick([15, 30])} kHz subcarrier spacing.`,
      (s) => `The ${s.pick(schedulers)} scheduler allocated on average ${s.int(20, 260)} PRBs per slot in the downlink.`,
      (s) => `PRB utilisation peaked at ${s.int(60, 99)} % at ${time(s)}, when ${s.int(40, 600)} UEs were connected.`,
      (s) => `Average MCS was ${s.int(8, 27)} in the downlink and ${s.int(4, 20)} in the uplink.`,
      (s) => `Downlink BLER stayed at ${s.num(5, 12, 1)} %, close to the ${s.pick([10, 10, 12])} % link adaptation target.`,
      (s) => `Switching to the ${s.pick(schedulers)} scheduler raised cell-edge throughput by ${s.int(5, 40)} %.`,
      (s) => `Control channel load used ${s.int(1, 3)} OFDM symbols of CORESET in ${s.int(50, 95)} % of slots.`,
      (s) => `Guaranteed bit rate flows received ${s.int(5, 30)} % of the PRBs before best effort traffic was served.`,
    ],
  },
  {
    title: (s) => `Network slice and QoS flow change CR-${s.int(1000, 9999)}`,
    body: [
      (s) => `Slice S-NSSAI with SST ${s.pick([1, 2, 3])} and SD ${s.int(100, 999)} was added for the ${s.pick(['factory', 'stadium', 'hospital', 'port', 'campus'])} customer.`,
      (s) => `Voice QoS flows use 5QI ${s.pick([1, 5])} while video uses 5QI ${s.pick([2, 7, 8])} with ARP priority ${s.int(1, 15)}.`,
      (s) => `The slice has a guaranteed bit rate of ${s.int(10, 500)} Mbps and a maximum of ${s.int(500, 2000)} UEs.`,
      (s) => `RAN resources for the slice are capped at ${s.int(10, 50)} % of PRBs on ${s.int(3, 30)} gNBs.`,
      (s) => `Packet delay budget for the slice is ${s.pick([10, 20, 50, 100, 300])} ms and packet error rate ${s.pick(['1e-3', '1e-4', '1e-6'])}.`,
      (s) => `The change was tested on ${site(s)} on ${date(s)} and rolled out to the ${s.pick(regions)} cluster.`,
      (s) => `QoS flow setup success for the slice was ${s.num(97, 99.9, 1)} % during the first week.`,
      (s) => `The UPF for the slice runs in the ${s.pick(regions)} edge site to keep latency under ${s.int(5, 20)} ms.`,
    ],
  },
  {
    title: (s) => `RAN design note: ${s.pick(['gNB split', 'numerology', 'beam management', 'carrier aggregation', 'fronthaul sizing'])} for ${s.pick(regions)} sites`,
    body: [
      (s) => `Each gNB is split into a central unit and ${s.int(2, 8)} distributed units connected over F1.`,
      (s) => `Band ${s.pick(bands)} uses ${s.pick([30, 120])} kHz subcarrier spacing, so one slot lasts ${s.pick(['0.5', '0.125'])} ms.`,
      (s) => `The massive MIMO radio has ${s.pick([32, 64])} transmit chains and serves up to ${s.int(4, 16)} layers in MU-MIMO.`,
      (s) => `SSB beams sweep ${s.pick([4, 8, 64])} directions and the UE reports the best beam every ${s.pick([20, 40, 80])} ms.`,
      (s) => `Carrier aggregation combines ${s.pick(bands)} with ${s.pick(bands)} for up to ${s.int(150, 400)} MHz of spectrum.`,
      (s) => `The fronthaul needs about ${s.int(10, 25)} Gbps per radio unit with the 7.2x split.`,
      (s) => `TDD pattern ${s.pick(['DDDSU', 'DDDDDDDSUU', 'DDSUU'])} gives the downlink about ${s.int(60, 80)} % of the slots.`,
      (s) => `Inter-site distance in the ${s.pick(regions)} area is ${s.int(200, 900)} metres for the mid-band layer.`,
    ],
  },
];

// ---------------------------------------------------------------- general: everyday English

const dishes = ['tomato soup', 'lemon cake', 'vegetable curry', 'roast chicken', 'apple pie', 'mushroom risotto', 'banana bread', 'bean stew'];
const towns = ['Lisbon', 'Kyoto', 'Edinburgh', 'Vienna', 'Quebec', 'Seville', 'Bergen', 'Hobart', 'Cusco', 'Tallinn'];
const sights = ['the old harbour', 'the cathedral', 'a hillside garden', 'the covered market', 'the river walk', 'a small museum', 'the castle ruins'];
const flowers = ['roses', 'tulips', 'sunflowers', 'lavender', 'dahlias', 'sweet peas', 'marigolds'];
const eras = ['the Bronze Age', 'the Roman period', 'the Middle Ages', 'the Renaissance', 'the eighteenth century', 'the Victorian era'];
const people = ['my grandmother', 'our neighbour', 'the baker', 'a friend from school', 'the guide', 'my brother'];

const generalKinds: { title: Template; body: Template[] }[] = [
  {
    title: (s) => `A simple recipe for ${s.pick(dishes)}`,
    body: [
      (s) => `Start by warming ${s.int(1, 4)} tablespoons of olive oil in a heavy pan over a medium flame.`,
      (s) => `Chop ${s.int(1, 3)} onions and ${s.int(2, 5)} cloves of garlic, then soften them for ${s.int(4, 12)} minutes.`,
      (s) => `${cap(s.pick(people))} always added a pinch of ${s.pick(['cinnamon', 'nutmeg', 'paprika', 'cumin', 'thyme'])} at this point.`,
      (s) => `Pour in ${s.int(200, 900)} millilitres of stock and let it simmer gently for ${s.int(15, 60)} minutes.`,
      (s) => `Bake at ${s.pick([160, 170, 180, 190, 200])} degrees until the top is golden, about ${s.int(20, 55)} minutes.`,
      (s) => `Serve it warm with fresh bread, and keep any leftovers in the fridge for up to ${s.int(2, 4)} days.`,
      (s) => `If you have no butter, ${s.int(50, 150)} grams of soft cheese works almost as well.`,
      (s) => `Taste before serving and add a little ${s.pick(['salt', 'pepper', 'lemon juice', 'honey', 'vinegar', 'chilli'])} if it needs lifting.`,
    ],
  },
  {
    title: (s) => `Weather for ${s.pick(towns)} on ${s.pick(['Monday', 'Tuesday', 'Wednesday', 'Thursday', 'Friday', 'Saturday', 'Sunday'])}`,
    body: [
      (s) => `The morning will be ${s.pick(['cloudy', 'bright', 'foggy', 'damp', 'crisp'])} with temperatures around ${s.int(2, 18)} degrees.`,
      (s) => `By the afternoon the sun should break through and the air will warm to ${s.int(12, 31)} degrees.`,
      (s) => `There is a ${s.int(10, 90)} percent chance of showers in the evening, heavier near the hills.`,
      (s) => `A ${s.pick(['light', 'fresh', 'strong', 'gusty'])} wind from the ${s.pick(['north', 'south', 'west', 'east'])} will make it feel cooler by the coast.`,
      (s) => `Tomorrow looks ${s.pick(['drier', 'wetter', 'warmer', 'colder'])}, so it is a good day for a long walk.`,
      (s) => `Farmers will welcome the ${s.int(5, 40)} millimetres of rain expected over the weekend.`,
      (s) => `Sunset is at ${s.int(5, 8)} in the evening, and the night will be ${s.pick(['clear and still', 'mild and cloudy', 'cold with a touch of frost', 'windy'])}.`,
      (s) => `${cap(s.pick(people))} says the ${s.pick(['harbour', 'park', 'market', 'beach'])} will be busy if the temperature passes ${s.int(18, 28)} degrees.`,
    ],
  },
  {
    title: (s) => `A short history of ${s.pick(towns)}`,
    body: [
      (s) => `People have lived near ${s.pick(sights)} since ${s.pick(eras)}, drawn by fresh water and good soil.`,
      (s) => `During ${s.pick(eras)} the town grew rich on the trade in ${s.pick(['wool', 'salt', 'wine', 'timber', 'spices', 'fish'])}.`,
      (s) => `A great fire destroyed about ${s.int(100, 900)} houses, and the streets were rebuilt in stone.`,
      (s) => `The first bridge over the river was finished after ${s.int(5, 40)} years of work.`,
      (s) => `Writers and painters came in ${s.pick(eras)}, and some of their letters are kept in ${s.pick(sights)}.`,
      (s) => `Today about ${s.int(20, 900)} thousand people live there, and many still speak of the old festivals.`,
      (s) => `The town hall bell has rung every hour for more than ${s.int(150, 600)} years.`,
    ],
  },
  {
    title: (s) => `Travel diary: ${s.int(2, 10)} days in ${s.pick(towns)}`,
    body: [
      (s) => `We arrived by ${s.pick(['train', 'ferry', 'bus', 'plane'])} late in the evening and found a quiet guest house near ${s.pick(sights)}.`,
      (s) => `On the first morning ${s.pick(people)} showed us ${s.pick(sights)} before the crowds arrived.`,
      (s) => `Lunch was ${s.pick(dishes)} in a tiny cafe where the owner told us stories about the town.`,
      (s) => `We walked about ${s.int(8, 25)} kilometres that day and our feet ached by dinner time.`,
      (s) => `The best moment was watching the light change over ${s.pick(sights)} at dusk.`,
      (s) => `If you go, bring comfortable shoes, a light jacket and some patience for the ${s.pick(['steep hills', 'narrow lanes', 'busy markets', 'slow ferries'])}.`,
      (s) => `On our last day it rained, so we spent ${s.int(2, 5)} happy hours in ${s.pick(sights)}.`,
    ],
  },
  {
    title: (s) => `Gardening notes for ${s.pick(['spring', 'early summer', 'late summer', 'autumn'])}`,
    body: [
      (s) => `Sow ${s.pick(flowers)} about ${s.int(1, 3)} centimetres deep in a sunny, sheltered bed.`,
      (s) => `Water young plants every ${s.int(2, 4)} days unless the soil is still damp below the surface.`,
      (s) => `${cap(s.pick(people))} swears by a mulch of leaves and grass clippings to keep weeds down.`,
      (s) => `Cut the ${s.pick(flowers)} back by a third after flowering and they will often bloom again.`,
      (s) => `Slugs love a wet night, so check the ${s.pick(flowers)} seedlings with a torch every ${s.int(2, 5)} evenings.`,
      (s) => `${cap(s.pick(people))} lost ${s.int(3, 30)} plants to a late frost, so wait until ${s.pick(['April', 'May', 'June'])} before planting out.`,
      (s) => `A bed of ${s.int(2, 9)} square metres is enough for ${s.pick(flowers)}, ${s.pick(flowers)} and a row of herbs.`,
      (s) => `Plant ${s.pick(flowers)} next to the beans to bring bees and other helpful insects.`,
      (s) => `Compost turned every ${s.int(2, 6)} weeks will be ready in about ${s.int(4, 9)} months.`,
    ],
  },
];

// ---------------------------------------------------------------- instructions: telecom Q/A

const glossary: [string, string, string][] = [
  ['PRB', 'Physical Resource Block', 'the smallest block of frequency resources the scheduler assigns, 12 subcarriers wide'],
  ['gNB', 'next generation Node B', 'the 5G NR base station that serves UEs over the radio interface'],
  ['RAN', 'Radio Access Network', 'the part of the network that connects devices to the core over radio'],
  ['UE', 'User Equipment', 'the phone, modem or device that connects to the network'],
  ['NR', 'New Radio', 'the 5G radio access technology defined by 3GPP'],
  ['QoS', 'Quality of Service', 'the set of guarantees such as bit rate, delay and loss given to traffic'],
  ['5QI', '5G QoS Identifier', 'a number that points to standard QoS characteristics of a flow'],
  ['ARP', 'Allocation and Retention Priority', 'the priority used to admit or pre-empt a QoS flow'],
  ['GBR', 'Guaranteed Bit Rate', 'a QoS flow type whose bit rate the network reserves resources for'],
  ['S-NSSAI', 'Single Network Slice Selection Assistance Information', 'the identifier of one network slice, made of SST and SD'],
  ['SST', 'Slice/Service Type', 'the part of S-NSSAI that says what kind of service a slice offers'],
  ['RSRP', 'Reference Signal Received Power', 'the average power of reference signals a UE measures from a cell'],
  ['SINR', 'Signal to Interference plus Noise Ratio', 'how much stronger the wanted signal is than interference and noise'],
  ['CQI', 'Channel Quality Indicator', 'the UE report the gNB uses to choose modulation and coding'],
  ['MCS', 'Modulation and Coding Scheme', 'the combination of modulation order and code rate used on a link'],
  ['BLER', 'Block Error Rate', 'the share of transport blocks received with errors'],
  ['HARQ', 'Hybrid Automatic Repeat Request', 'fast retransmission with soft combining at the MAC layer'],
  ['RRC', 'Radio Resource Control', 'the layer 3 protocol that sets up and manages radio connections'],
  ['SSB', 'Synchronization Signal Block', 'the broadcast block a UE uses to find and synchronise to a cell'],
  ['PCI', 'Physical Cell Identity', 'a number from 0 to 1007 that distinguishes neighbouring cells'],
  ['CU', 'Central Unit', 'the part of a split gNB that runs RRC and PDCP'],
  ['DU', 'Distributed Unit', 'the part of a split gNB that runs RLC, MAC and the high PHY'],
  ['RU', 'Radio Unit', 'the part of a gNB that holds the radio and the low PHY'],
  ['UPF', 'User Plane Function', 'the 5G core function that forwards user data packets'],
  ['AMF', 'Access and Mobility Management Function', 'the 5G core function that handles registration and mobility'],
  ['SMF', 'Session Management Function', 'the 5G core function that sets up PDU sessions'],
  ['TDD', 'Time Division Duplex', 'sharing one carrier between uplink and downlink in time'],
  ['FDD', 'Frequency Division Duplex', 'using separate carriers for uplink and downlink'],
  ['MIMO', 'Multiple Input Multiple Output', 'using many antennas to send several data layers at once'],
  ['OFDM', 'Orthogonal Frequency Division Multiplexing', 'the multicarrier waveform used by NR'],
  ['SCS', 'Subcarrier Spacing', 'the distance between OFDM subcarriers, from 15 to 240 kHz in NR'],
  ['BWP', 'Bandwidth Part', 'a subset of a carrier that a UE is configured to use'],
  ['KPI', 'Key Performance Indicator', 'a measured value used to judge network performance'],
  ['NOC', 'Network Operations Centre', 'the team and room that monitor the network around the clock'],
  ['VSWR', 'Voltage Standing Wave Ratio', 'a measure of how much power is reflected back from the antenna'],
  ['TTT', 'Time To Trigger', 'how long a handover condition must hold before the UE reports it'],
  ['CHO', 'Conditional Handover', 'a handover prepared in advance and executed by the UE when a condition is met'],
  ['PDCP', 'Packet Data Convergence Protocol', 'the layer that handles ciphering, header compression and reordering'],
  ['RLC', 'Radio Link Control', 'the layer that segments data and retransmits it with ARQ'],
  ['MAC', 'Medium Access Control', 'the layer that schedules, multiplexes and runs HARQ'],
];
const alarmChecks: [string, string][] = [
  ['NG link down', 'Check the transport path and SCTP association between the gNB and the AMF.'],
  ['cell unavailable', 'Check the radio unit status, the fronthaul link and recent configuration changes.'],
  ['VSWR over threshold', 'Inspect the antenna jumpers and connectors for damage or water ingress.'],
  ['GPS synchronisation loss', 'Check the GPS antenna, its cable and the timing source configuration.'],
  ['board over temperature', 'Check the cabinet fans, air filters and the site cooling.'],
  ['RRU communication failure', 'Check the fibre and SFP modules between the baseband and the radio unit.'],
  ['Xn link failure', 'Check IP reachability and the SCTP association to the neighbouring gNB.'],
  ['power supply fault', 'Check the rectifiers, batteries and mains supply at the site.'],
];
const slotMs: Record<number, string> = { 15: '1', 30: '0.5', 60: '0.25', 120: '0.125' };

function instructionPool(s: Slots): { prompt: string; response: string }[] {
  const pool: { prompt: string; response: string }[] = [];
  for (const [abbr, expansion, meaning] of glossary) {
    pool.push({ prompt: `What does ${abbr} stand for?`, response: `${abbr} stands for ${expansion}.` });
    pool.push({ prompt: `Explain ${abbr} in one sentence.`, response: `${expansion} (${abbr}) is ${meaning}.` });
    pool.push({ prompt: `In 5G networks, what is meant by ${expansion}?`, response: `It is ${meaning}, usually written ${abbr}.` });
    pool.push({ prompt: `What is the abbreviation for ${expansion}?`, response: `It is abbreviated ${abbr}.` });
  }
  for (const [alarm, check] of alarmChecks) {
    pool.push({ prompt: `A ${alarm} alarm is raised on a gNB. What should be checked first?`, response: check });
    pool.push({ prompt: `What is the usual first step for a ${alarm} alarm?`, response: check });
  }
  for (const scs of [15, 30, 60, 120]) {
    pool.push({ prompt: `How long is one slot with ${scs} kHz subcarrier spacing?`, response: `One slot lasts ${slotMs[scs]} ms at ${scs} kHz.` });
  }
  for (const k of kpis) {
    pool.push({ prompt: `Which report tracks the ${k}?`, response: `It is in the weekly KPI report, cluster by cluster.` });
  }
  return s.sample(pool, pool.length);
}

// ---------------------------------------------------------------- assembly

function cap(text: string): string {
  return text.charAt(0).toUpperCase() + text.slice(1);
}

function document(s: Slots, kind: { title: Template; body: Template[] }): string {
  const count = s.int(Math.max(4, kind.body.length - 3), kind.body.length);
  // A random subset, kept in template order so a ticket still opens before it closes.
  const chosen = new Set(s.sample(kind.body, count));
  const sentences = kind.body.filter((t) => chosen.has(t)).map((t) => t(s));
  // Paragraphs of two or three sentences, as in a real ticket or report.
  const paragraphs: string[] = [];
  for (let i = 0; i < sentences.length; ) {
    const take = s.int(2, 3);
    paragraphs.push(sentences.slice(i, i + take).join(' '));
    i += take;
  }
  return [kind.title(s), ...paragraphs].join('\n\n');
}

function badDomainDocs(s: Slots, domain: string[]): { at: number; text: string }[] {
  const e = demoQualityExpectations;
  const pii = `Escalation note for ${site(s)}: if the ${s.pick(alarms)} alarm returns outside office hours, ` +
    `e-mail ${e.piiEmail} or call the on-call engineer on ${e.piiPhone} before dispatching a field team.`;
  return [
    { at: Math.floor(domain.length * 0.4), text: domain[Math.min(e.duplicateOfIndex, domain.length - 1)] },
    { at: Math.floor(domain.length * 0.6), text: e.tooShortText },
    { at: Math.floor(domain.length * 0.8), text: pii },
  ];
}

export function generateDemoCorpus(o: DemoCorpusOptions = {}): DemoCorpus {
  const opts = { ...defaultDemoCorpusOptions, ...o };
  const s = new Slots(mulberry32(opts.seed));
  const domain = Array.from({ length: opts.domainDocs }, (_, i) => document(s, domainKinds[i % domainKinds.length]));
  const general = Array.from({ length: opts.generalDocs }, (_, i) => document(s, generalKinds[i % generalKinds.length]));
  if (domain.length > 0) {
    // Insert from the back so earlier positions stay valid.
    for (const bad of badDomainDocs(s, domain).reverse()) domain.splice(bad.at, 0, bad.text);
  }
  const instructions = instructionPool(s).slice(0, opts.instructionPairs);
  return { domain, general, instructions };
}

/** Terms the demo's documents are made of, by kind and category: the demo's multiple-choice sets draw on them. */
export const demoCategories = {
  domain: { alarms, kpis, actions, engineers },
  general: { dishes, flowers, sights, towns, eras },
} as const;

export const demoVocabulary = {
  domain: Object.values(demoCategories.domain).flat(),
  general: Object.values(demoCategories.general).flat(),
} as const;
