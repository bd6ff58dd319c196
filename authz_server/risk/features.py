"""Behavioural features (schema v2): each call, against its edge's baseline and recent activity, as named numbers.

Every feature is a non-negative number where larger means "less like this edge's normal"; the model turns each
one into a surprise against that feature's own benign distribution (model.py). The vector follows a versioned
schema (`FEATURE_SCHEMA`): a model records the schema and names it was trained on and is refused when they differ.

Where the numbers come from (README.md here has the table):
- the **baseline** (baseline.py): per-edge tables learned offline from the site's decision log and shipped inside
  the model artifact, so every replica scores a call the same way. Empty in the bundled model.
- **recent activity** (`BehaviourState`): calls per minute on the edge, distinct ids in a short and a long window,
  the current sequential-id walk, the source addresses of each certificate. It counts every call policy let
  through and falls when the activity stops, so it cannot lock a caller out after an attack ends.
- **learned normal** (also `BehaviourState`): templates, methods, hours, sizes, subnets added online. Only calls
  that went through with low risk teach it (`Learning`), so an attack cannot teach itself in.

Everything kept from untrusted input is bounded in bytes: paths are folded by `authz_server.routes.fold` and the
template kept as a `bounded` key, ids become 32-bit hashes in fixed-size bitmaps, every map has a count limit.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import re
import threading
import zlib
from array import array
from collections import OrderedDict
from dataclasses import dataclass
from enum import IntFlag
from functools import lru_cache
from typing import TYPE_CHECKING, TypeVar

from authz_server.risk.baseline import EMPTY
from authz_server.risk.config import RiskConfig
from authz_server.routes import fold
from authz_server.values import fast_init

if TYPE_CHECKING:
    from authz_server.call import Call
    from authz_server.identity.result import Identity
    from authz_server.risk.baseline import Baseline, EdgeBaseline, TemplateBaseline

FEATURE_SCHEMA = "v2"


@dataclass(frozen=True, slots=True)
class Feature:
    name: str
    description: str
    high: float
    """Values are clipped to 0..high."""
    tail_unit: float
    """Beyond the largest benign value seen in training, each `tail_unit` more adds one decade of surprise."""
    legitimate_change: bool = False
    """Can move for a legitimate change (a new dependency, a deploy's new routes, a long-running batch):
    its surprise is capped below the deny band, so on its own it annotates and never denies."""


FEATURES: tuple[Feature, ...] = (
    Feature(
        "edge_novelty",
        "256 / (256 + low-risk calls seen online) for an edge the baseline does not know; 0 for a known edge",
        1.0,
        0.25,
        True,
    ),
    Feature(
        "route_unusual",
        "log2((edge calls a day + 1) / (calls a day of this template on the edge + 1)): bits of "
        "surprise at this template",
        24.0,
        2.0,
        True,
    ),
    Feature(
        "method_unusual",
        "log2((template calls a day + 1) / (calls a day with this method on it + 1)); a write (not GET, HEAD, "
        "OPTIONS, TRACE) on an edge whose baseline only reads: log2(edge calls a day + 1), never learned online",
        24.0,
        2.0,
        True,
    ),
    Feature(
        "hour_unusual",
        "log2(the edge's average calls per hour / its calls in this UTC hour of day and the neighbouring "
        "hour the call is nearer to) less 3 bits, the room of a quiet hour; 0 until the edge has 48 calls",
        16.0,
        2.0,
        True,
    ),
    Feature(
        "rate_burst",
        "log2((calls on the edge in the last minute + 1) / (the most the edge did in one minute at "
        "this hour of day and the neighbouring hour the call is nearer to, or 4x its average minute then, or "
        "4x its average minute over the day when it never works then, + 1))",
        16.0,
        1.0,
    ),
    Feature(
        "ids_short",
        "log2((distinct ids on the edge's template in the last 1-2 minutes + 1) / (the baseline's most + 1))",
        16.0,
        1.0,
    ),
    Feature(
        "ids_long",
        "log2((distinct ids on the edge's template in the last 1-2 hours + 1) / (the baseline's most + 1))",
        16.0,
        1.0,
        True,
    ),
    Feature(
        "id_walk",
        "log2((length of the walk this id continues + 1) / (the baseline's longest + 1)); a walk: numeric ids going "
        "one way by a stride (1-8), skipping at most 7 strides at a time",
        16.0,
        1.0,
    ),
    Feature(
        "size_unusual",
        "log2((request size + 1) / (the largest usual size of this method on this template + "
        "1)); size from content-length, else Envoy's http.size when > 0",
        24.0,
        1.0,
    ),
    Feature(
        "source_new",
        "the source address's subnet for this SPIFFE ID: 0 known /24 (IPv6 /64), 1 new /24 in a "
        "known /16 (/48), 2 new /16",
        2.0,
        0.5,
        True,  # pods rescheduled onto a new node: annotated, learned, never denied on this alone
    ),
    Feature(
        "serial_multi_source",
        "other source addresses this certificate was seen from, counted on the copy: a call away from the caller's "
        "known subnets, or inside them at another address than the certificate's first (0 for the pod itself)",
        3.0,
        0.5,
    ),
    Feature(
        "svid_age", "share of the SVID's lifetime elapsed (0 when unknown): the same for 1 h and 24 h SVIDs", 2.0, 0.1
    ),
)
FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)
N_FEATURES = len(FEATURES)
_HIGH = tuple(f.high for f in FEATURES)
NOVELTY = frozenset(FEATURE_NAMES[i] for i in (0, 1, 2, 3, 9))
"""The novelty features: edge, route, method, hour (rarity ratios, so a few calls stay rare) and the source subnet.
A call whose only alarms are these still teaches the online state what is new (`Learning.NOVELTY`): a deploy's
routes and a new node's subnet become known, while a copied certificate (`serial_multi_source`) or any other
behaviour alarm teaches nothing."""

CLOCK_SKEW_S = 5.0
"""Behaviour reads Envoy's `request.time` (when the request arrived, not when this server got round to it), bounded
to within this many seconds of the server's clock so that a CheckRequest cannot pick its own time: Envoy's lag
to this server is milliseconds, NTP keeps node clocks well within a second. Identity and policy validity read
the server's clock alone (authorizer.py)."""


def behaviour_time(request_time: float, now: float) -> float:
    """The time behaviour is scored at: Envoy's request time, bounded to within `CLOCK_SKEW_S` of `now`."""
    if request_time < now - CLOCK_SKEW_S:
        return now - CLOCK_SKEW_S
    if request_time > now + CLOCK_SKEW_S:
        return now + CLOCK_SKEW_S
    return request_time


MAX_KEY = 128
"""Longest string the state or a baseline keeps from a request (template, callee, caller)."""
MAX_METHOD = 16


def bounded(text: str, limit: int = MAX_KEY) -> str:
    """`text` itself when short; else its head, `#` and a 64-bit digest of the whole: bounded, still distinct.

    `#` never occurs in a path the server matched (the fragment is cut off in call.py), so it marks the cut."""
    if len(text) <= limit:
        return text
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()
    return f"{text[: limit - 17]}#{digest}"


@fast_init
@dataclass(frozen=True, slots=True)
class CallFacts:
    """What the features read of one call, every string bounded; built from a live call or a decision-log line."""

    ts: float
    caller: str
    callee: str
    template: str
    last_id: str
    """The last identifier folded out of the path ('' when none): the instance the call touches."""
    method: str
    size: int
    """Request body bytes: content-length, else Envoy's http.size when > 0, else -1 (unknown)."""
    address: str
    certificate: str
    """The leaf certificate's serial (else its fingerprint); '' when the caller presented none."""
    issued_at: float | None
    expires_at: float | None


def request_size(content_length: str | None, envoy_size: int) -> int:
    """content-length when it is a number (Envoy reports http.size 0 unless it buffers the body), else http.size
    when positive, else -1."""
    if content_length is not None and 0 < len(content_length) <= 19 and content_length.isdigit():
        return int(content_length)
    return envoy_size if envoy_size > 0 else -1


def template_and_id(path: str) -> tuple[str, str]:
    """The path's bounded route template and its last identifier (see authz_server.routes)."""
    template, ids = fold(path)
    return bounded(template), ids[-1] if ids else ""


def facts_from_call(call: Call, identity: Identity, route_path: str, now: float) -> CallFacts:
    template, last_id = template_and_id(route_path)
    return CallFacts(
        behaviour_time(call.received_at, now),
        bounded(identity.spiffe_id),
        bounded(call.destination_principal or call.host),
        template,
        last_id,
        call.method[:MAX_METHOD],
        request_size(call.headers.get("content-length"), call.size),
        call.source.address[:64],
        identity.serial or identity.fingerprint or "",
        identity.issued_at,
        identity.expires_at,
    )


class Learning(IntFlag):
    """What one call may teach the online state besides recent activity (which every call let through feeds)."""

    NOTHING = 0
    NOVELTY = 1
    """Templates, methods, the edge itself, the caller's subnet: no behaviour feature (rate, ids, walk, size,
    serial, SVID age) alarmed. A novelty alarm alone does not stop it: route and method are rarity ratios, so a
    deploy that moves every route to /v2/ becomes common within the hour while a handful of probes stays rare; and
    a subnet that never alarmed on anything else is a new node, which would otherwise alarm forever."""
    HOUR = 2
    """The call's hour of day, unless `hour_unusual` alarmed on it. An hour is counts, not a ratio over decaying
    counts: an edge that never works at 02:00 reads 0 there, so each off-hours call it learned took a bit or more
    off the next one, and the lab's admin consoles (20-40 calls an hour at work) taught a night's 3-25 calls their
    own hour within a handful (off-hours admin recall 56 % on the drawn site). A batch moved to a new hour stays
    annotated (`hour_unusual` is capped under the deny edge) until `model train` sees it."""
    EVERYTHING = 7
    """Also sizes and the rate peak of an edge with no baseline: no feature alarmed at all."""


def learning_for(alarmed: frozenset[str]) -> Learning:
    """What a call that went through may teach, given the features that alarmed on it (serving and training both)."""
    if not alarmed:
        return Learning.EVERYTHING
    if not alarmed <= NOVELTY:
        return Learning.NOTHING
    return Learning.NOVELTY if "hour_unusual" in alarmed else Learning.NOVELTY | Learning.HOUR


_IPV4 = re.compile(r"(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})")
"""A dotted quad as `ipaddress` accepts it: four decimal octets without leading zeros."""


@lru_cache(maxsize=4096)
def subnets(address: str) -> tuple[str, str]:
    """(/24, /16) for IPv4, (/64, /48) for IPv6; ('', '') when the address is not an IP."""
    quad = _IPV4.fullmatch(address)
    if quad is not None and max(map(int, quad.groups())) <= 255:
        # What ipaddress gives (300,000 drawn strings compared), at a fifteenth of its cost (2.8 µs against 43 on
        # a busy 2-core box): a source address the cache does not hold (a new pod, or more pods than it keeps)
        # would otherwise cost its call that much.
        a, b, c, _ = quad.groups()
        return f"{a}.{b}.{c}.0/24", f"{a}.{b}.0.0/16"
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return "", ""
    if ip.version == 4:
        return str(ipaddress.ip_network(f"{ip}/24", strict=False)), str(ipaddress.ip_network(f"{ip}/16", strict=False))
    return str(ipaddress.ip_network(f"{ip}/64", strict=False)), str(ipaddress.ip_network(f"{ip}/48", strict=False))


_DIGITS_MAX = 15
_SLUG_DIGITS = 3
"""The digit run a slug id must end in to count as a number: the run `routes.fold` needs to call a slug an id."""
_DIGEST = re.compile(r"[0-9a-fA-F]{8,}|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_WALK_STEP = 8
"""Ids at most this far apart continue a walk: enumeration by +1 (or by a small stride, or skipping gaps)."""
_WALK_GAP = 8
"""A walk goes on across a step of up to this many strides in its direction: enumeration skips ids that do not exist
(deleted rows, a sparse key space, an attacker jittering its pace), and one skipped id must not reset the run to 0.
Ordinary reads of a popular id range continue a walk by chance more often with it; the baseline's longest walk per
template, measured with the same rule, absorbs that."""
_WALK_HEADS = 4
_WALK_IDLE_S = 3600.0
"""A walk not extended for this long is over: low-and-slow enumeration at one id a minute keeps its walk."""
_SHORT_BITS = 512
_LONG_BITS = 1024
"""Distinct ids are counted by linear counting over bitmaps of this many bits (64 and 128 bytes, two of each per
template with ids): within a few percent up to about half the bit count, still rising (with more error) to several
times it; a template busier than that sees the same saturation in its baseline, so the ratio stays meaningful."""
_LONG_WINDOW_S = 3600.0
_HOUR_DECAY_S = 3600.0
_MAX_TEMPLATES = 32
"""Templates remembered per edge (a deploy adds a few). A new one replaces the one learned least in the last hour:
ids that do not fold (a base64 token of letters only, one in 40 of 22-character tokens) make one-off templates,
and when the first 32 won for good, a busy token route filled the table within hours and its real template, seen
later, had no walk or id counts at all (the lab's identity/auth: 0 of 176 low-and-slow calls alarmed)."""
_MAX_METHODS = 8
_MAX_SUBNETS = 16
_MAX_CERT_ADDRESSES = 4
_MAX_PREFIXES = 4096
"""/16s (/48s) remembered as the site's address space, and outside it with their witnesses: 4,096 covers every /16
of 10.0.0.0/8 sixteen times over (~1 MB at most with three witnesses each)."""
_SITE_WITNESSES = 3
_EDGE_NEW_SCALE = 256.0
_HOURS_KNOWN = 48
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
"""RFC 9110's safe methods: a caller that only uses these reads. Anything else changes the callee's state."""
_READS_ONLY_CALLS = 50
"""Calls a baseline edge needs, all safe, to count as a reader: 50 reads and no write put writes under 6% of its
calls (the rule of three, 95%), where one write among them would be an ordinary, rare method."""
_MIN_CALLS_FOR_PEAK = 60
"""An edge without a baseline compares its minute rate with the peak it learned online after this many calls."""
PEAK_HEADROOM = 4.0
"""`rate_burst` reads a minute against the edge's busiest minute at this hour, or this many times its average
minute at this hour (+-1 h) when that is more. A short log's busiest minute is a Poisson maximum, 1.5-2x the
average on a busy edge: a sale, a launch or a failover runs 2-3.5x the usual rate for hours and is not an attack,
while a script hammering an edge runs 10x and more. On a quiet edge (a call a minute) the busiest minute is
already several times the average, so the headroom changes nothing there."""


QUIET_HOUR_BITS = 3.0
"""`hour_unusual` starts where an hour runs under an eighth of the edge's average (3 bits): quieter than any
working hour of a diurnal edge (its small hours run at a fifth to a quarter), while an hour the edge never works
reads log2(2 x its calls an hour + 1) before this room: 7-11 bits for the lab's office and batch workloads."""


def _nearer_hour(ts: float) -> int:
    """The hour of day beside the call's that it is nearer to: a call at 05:10 is near a batch that ran until
    04:30, one at 05:40 is not. Smoothing over both neighbours made any hour next to a worked one usual, so a
    batch job's bulk read an hour after its window (analytics/exporter, 840 calls at 05:36) read as nothing."""
    hour = int(ts // 3600 % 24)
    return (hour + 1) % 24 if ts % 3600 >= 1800 else (hour - 1) % 24


def _distinct(bits: int, width: int) -> float:
    """Linear counting: distinct items hashed into a bitmap of `width` bits, from the share of bits still zero."""
    zero = width - bits.bit_count()
    if zero <= 0:
        return width * math.log(width)
    return width * math.log(width / zero)


def _numeric(identifier: str) -> int | None:
    """The id as a number when it is one, or ends in a run of three or more digits after a prefix (`SKU-01234`,
    `inv_000187`): what an enumeration can count up. A hexadecimal digest or a UUID is None although it often ends
    in digits: those are a random tail (a digest ends in two or more digits one time in five), and walks over them
    would be chance, raising the baseline's longest walk for every route that uses digests."""
    if identifier.isdigit():
        return int(identifier) if len(identifier) <= _DIGITS_MAX else None
    end = len(identifier)
    start = end
    while start > 0 and identifier[start - 1].isdigit():
        start -= 1
    if end - start < _SLUG_DIGITS or end - start > _DIGITS_MAX or _DIGEST.fullmatch(identifier):
        return None
    return int(identifier[start:end])


class _Template:
    __slots__ = (
        "long_bits",
        "long_bucket",
        "long_prev",
        "methods",
        "rate",
        "rate_at",
        "short_bits",
        "short_bucket",
        "short_prev",
        "walks",
    )

    def __init__(self) -> None:
        self.rate = 0.0
        self.rate_at = 0.0
        self.methods: dict[str, list[float]] = {}
        """method -> [decayed calls, at, largest size learned online or -1]."""
        self.short_bucket = self.long_bucket = -1
        self.short_bits = self.short_prev = self.long_bits = self.long_prev = 0
        self.walks: list[list[float]] = []
        """[last numeric id, run length, last seen, stride] per walk in progress, at most _WALK_HEADS."""


class _Edge:
    __slots__ = ("hours", "learned", "minute", "minute_count", "minute_prev", "peak", "rate", "rate_at", "templates")

    def __init__(self) -> None:
        self.learned = 0
        self.rate = 0.0
        self.rate_at = 0.0
        self.minute = -1
        self.minute_count = 0
        self.minute_prev = 0
        self.peak = 0.0
        self.hours = array("I", bytes(96))
        """Calls learned per UTC hour of day: 24 unsigned ints, 96 bytes (a list of ints costs ~3x that)."""
        self.templates: dict[str, _Template] = {}


_K = TypeVar("_K")
_V = TypeVar("_V")


def _recall(memory: OrderedDict[_K, _V], key: _K) -> _V | None:
    """A least-recently-used lookup: a hit becomes the most recently used entry (two C calls)."""
    value = memory.get(key)
    if value is not None:
        memory.move_to_end(key)
    return value


def _remember(memory: OrderedDict[_K, _V], key: _K, value: _V, limit: int) -> _V:
    memory[key] = value
    if len(memory) > limit:
        memory.popitem(last=False)
    return value


def _decayed(value: float, at: float, ts: float) -> float:
    return value * math.exp(-(ts - at) / _HOUR_DECAY_S) if ts > at else value


def _ratio_bits(numerator: float, denominator: float) -> float:
    value = math.log2((numerator + 1.0) / (denominator + 1.0))
    return value if value > 0.0 else 0.0


@fast_init
@dataclass(frozen=True, slots=True)
class Activity:
    """Recent activity around one call, before the baseline compares it (training builds baselines from these)."""

    calls_minute: float
    """Calls on the edge in the last minute, this one included."""
    ids_short: float
    ids_long: float
    walk: int


_QUIET = Activity(1.0, 0.0, 0.0, 0)


class BehaviourState:
    """Recent activity and learned normal per edge, caller and certificate, shared by every model generation.

    One lock guards the maps; it is held for a handful of dictionary operations per call, never across the model.
    """

    def __init__(self, config: RiskConfig) -> None:
        self.window_s = config.window_s
        self._lock = threading.Lock()
        self._max_identities = config.max_identities
        self._max_edges = config.max_edges
        # Checked lazily when an edge is looked up (a TTL map would cost a clock read and a scan per call); the
        # LRU bound caps memory either way.
        self._idle_minutes = config.identity_ttl_s / 60
        self._started: float | None = None
        self._edges: OrderedDict[tuple[str, str], _Edge] = OrderedDict()
        self._subnets: OrderedDict[str, dict[str, None]] = OrderedDict()
        self._certificates: OrderedDict[str, dict[str, float]] = OrderedDict()
        self._prefixes: OrderedDict[str, None] = OrderedDict()
        """The site's address space learned online: /16s (/48s) some caller's pods were learned in."""
        self._witnesses: OrderedDict[str, dict[str, None]] = OrderedDict()
        """/16s (/48s) outside it, with the identities that came from there with low risk (fewer than 3)."""

    def started_at(self, now: float) -> float:
        """When this state started learning: the first time it was asked (the warm-up shadow counts from it, on
        the clock the stage is given, so a simulated day and a real one mean the same)."""
        if self._started is None:
            self._started = now
        return self._started

    def __len__(self) -> int:
        """Callers whose subnets are remembered."""
        with self._lock:
            return len(self._subnets)

    def sizes(self) -> dict[str, int]:
        with self._lock:
            return {
                "identities": len(self._subnets),
                "edges": len(self._edges),
                "templates": sum(len(e.templates) for e in self._edges.values()),
                "certificates": len(self._certificates),
            }

    # --- reading --------------------------------------------------------------------------------------------

    def _activity(self, edge: _Edge | None, template: _Template | None, facts: CallFacts) -> Activity:
        if edge is None:
            return _QUIET
        ts = facts.ts
        minute = int(ts // 60)
        if minute == edge.minute:
            calls = edge.minute_count + edge.minute_prev * (1.0 - (ts % 60) / 60) + 1.0
        elif minute == edge.minute + 1:
            calls = edge.minute_count * (1.0 - (ts % 60) / 60) + 1.0
        else:
            calls = 1.0
        if template is None or not facts.last_id:
            return Activity(calls, 0.0, 0.0, 0)
        hashed = zlib.crc32(facts.last_id.encode())
        bit = 1 << (hashed % _SHORT_BITS)
        short = int(ts // self.window_s)
        if short == template.short_bucket:
            bits = template.short_bits | template.short_prev | bit
        elif short == template.short_bucket + 1:
            bits = template.short_bits | bit
        else:
            bits = bit
        long_bit = 1 << (hashed % _LONG_BITS)
        hour = int(ts // _LONG_WINDOW_S)
        if hour == template.long_bucket:
            long_bits = template.long_bits | template.long_prev | long_bit
        elif hour == template.long_bucket + 1:
            long_bits = template.long_bits | long_bit
        else:
            long_bits = long_bit
        return Activity(
            calls, _distinct(bits, _SHORT_BITS), _distinct(long_bits, _LONG_BITS), _walk(template, facts, False)
        )

    def activity(self, facts: CallFacts) -> Activity:
        """Recent activity around the call (what training aggregates into a baseline)."""
        with self._lock:
            edge = self._edges.get((facts.caller, facts.callee))
            template = edge.templates.get(facts.template) if edge is not None else None
            return self._activity(edge, template, facts)

    def features(self, facts: CallFacts, baseline: Baseline) -> list[float]:
        """The call's feature vector in schema order; reads only (nothing is learned here)."""
        ts = facts.ts
        key = (facts.caller, facts.callee)
        with self._lock:
            edge = _recall(self._edges, key)
            if edge is not None and ts // 60 - edge.minute > self._idle_minutes:
                edge = None
            template = edge.templates.get(facts.template) if edge is not None else None
            activity = self._activity(edge, template, facts)
            known_subnets = self._subnets.get(facts.caller)
            narrow, wide = subnets(facts.address)
            has_subnet = not narrow or (known_subnets is not None and narrow in known_subnets)
            site = not has_subnet and wide in self._prefixes
            seen_from = self._certificates.get(facts.certificate) if facts.certificate else None
            first, elsewhere = "", 0
            if seen_from:
                first = next(iter(seen_from))
                elsewhere = len(seen_from) - (facts.address in seen_from)
            online_edge = _decayed(edge.rate, edge.rate_at, ts) if edge is not None else 0.0
            online_template = _decayed(template.rate, template.rate_at, ts) if template is not None else 0.0
            method = template.methods.get(facts.method) if template is not None else None
            online_method = _decayed(method[0], method[1], ts) if method is not None else 0.0
            online_size = int(method[2]) if method is not None else -1
            learned = edge.learned if edge is not None else 0
            online_peak = edge.peak if edge is not None and learned >= _MIN_CALLS_FOR_PEAK else -1.0
            hour = int(ts // 3600 % 24)
            beside = _nearer_hour(ts)
            # `learned` counts the calls that taught novelty; those whose own hour alarmed are in it but not in
            # their hour (Learning.HOUR), so hours read, if anything, a little more unusual.
            if edge is not None:
                hours = edge.hours
                at_hour = hours[hour] + hours[beside]
            else:
                at_hour = 0

        known = baseline.edge(facts.caller, facts.callee)
        known_template = known.templates.get(facts.template) if known is not None else None
        known_method = known_template.methods.get(facts.method) if known_template is not None else None
        # A template new or young since training (a deploy's `/v2/` routes) is judged on its edge's norms: a few
        # hours of its own (or none) say nothing about its busy hours (baseline.SETTLED_S).
        unsettled = known is not None and (known_template is None or facts.template in known.young)
        edge_method = known.methods.get(facts.method) if unsettled and known is not None else None
        per_day = baseline.per_day

        edge_novelty = 0.0 if known is not None else _EDGE_NEW_SCALE / (_EDGE_NEW_SCALE + learned)
        # Online counts decay over an hour, so they read as calls in the last hour: x24 for calls a day.
        edge_day = (known.calls * per_day if known is not None else 0.0) + 24.0 * online_edge
        template_day = (known_template.calls * per_day if known_template is not None else 0.0) + 24.0 * online_template
        method_day = (known_method.calls * per_day if known_method is not None else 0.0) + 24.0 * online_method
        route_unusual = _ratio_bits(edge_day, template_day) if edge_day > 0 else 0.0
        if known is not None and facts.method not in SAFE_METHODS and _reads_only(known):
            # A write from a caller that, in the whole site log, only ever read from this callee: judged on the
            # baseline alone, against the edge's calls. Online learning would make the 2nd..30th DELETE of a
            # compromised reader look ordinary within minutes; a deploy that gives a reader a write path stays
            # annotated (never denied: the feature is capped) until the next `model train` sees it.
            method_unusual = _ratio_bits(known.calls * per_day, 0.0)
        else:
            method_unusual = _ratio_bits(template_day, method_day) if template_day > 0 else 0.0
            if unsettled and known is not None:  # the method's share of the edge, when that is the smaller surprise
                method_unusual = min(method_unusual, _ratio_bits(known.calls, edge_method.calls if edge_method else 0))

        total = learned
        if known is not None:
            total += known.calls
            at_hour += known.hours[hour] + known.hours[beside]
        # Calls in this hour and the nearer neighbouring one (two hours' worth) against two average hours, less
        # the room a quiet hour has: a diurnal edge's small hours run at a quarter of its average (2.2 bits in the
        # lab) every night, and every call in them read as unusual crowded the FPR budget's edge (104 of the 243
        # benign alarms of the site model, 0.17 % alarmed at a 0.1 % budget, were such calls).
        hour_unusual = 0.0
        if total >= _HOURS_KNOWN:
            hour_unusual = max(0.0, _ratio_bits(2 * total / 24, at_hour) - QUIET_HOUR_BITS)

        # `volume`: how far the peak headroom lifts the edge's busiest minute. Distinct ids in a minute or two rise
        # as far in a legitimate peak (a sale reads more products), so `ids_short` gets the same room; and a burst
        # of the edge's own mix, repeating its popular ids, then moves `rate_burst` more than `ids_short`.
        volume = 1.0
        if known is not None:
            # The hour of the call and the neighbouring one it is nearer to, as for `hour_unusual`. At a time the
            # edge never works, its average hour over the day stands in: a call or two is then `hour_unusual`'s,
            # while reading at its batch pace at noon is volume the edge never has at this hour (a night job's
            # own busiest minute, the reference before, let analytics/exporter read 840 ids unseen at 05:36).
            peak = known.minute_max
            busiest = float(max(peak[hour], peak[beside]))
            hourly = known.hours
            usual = max(hourly[hour], hourly[beside]) or known.calls / 24
            # Each hour of day was seen about `days` times (once, in a log shorter than a day).
            headroom = PEAK_HEADROOM * usual / (60.0 * max(baseline.days, 1.0))
            if headroom > busiest:
                volume = headroom / busiest if busiest > 0 else 1.0
                busiest = headroom
        else:
            busiest = online_peak
        rate_burst = _ratio_bits(activity.calls_minute, busiest) if busiest >= 0 else 0.0

        # Ids against the template's baseline; a template new or young since training against its edge's most; an
        # edge new since training is neutral here (it is novel: `edge_novelty` speaks); with no baseline at all
        # (the bundled model) the counts themselves, which its calibration saw across many sites.
        ids_usual: TemplateBaseline | EdgeBaseline | None = known if unsettled else known_template
        if ids_usual is not None:
            ids_short = _ratio_bits(activity.ids_short, ids_usual.ids_short * volume)
            ids_long = _ratio_bits(activity.ids_long, ids_usual.ids_long)
            id_walk = _ratio_bits(activity.walk, ids_usual.walk)
        elif baseline.edges:
            ids_short = ids_long = id_walk = 0.0
        else:
            ids_short = _ratio_bits(activity.ids_short, 0.0)
            ids_long = _ratio_bits(activity.ids_long, 0.0)
            id_walk = _ratio_bits(activity.walk, 0.0)

        size_unusual = 0.0
        if facts.size >= 0:
            usual = known_method.size if known_method is not None else -1
            if edge_method is not None and edge_method.size > usual:
                usual = edge_method.size
            if usual < 0:
                usual = online_size
            if usual >= 0:
                size_unusual = _ratio_bits(facts.size, usual)

        source_new = 0.0
        caller_nets = baseline.subnets(facts.caller)
        if not has_subnet:
            site = site or wide in baseline.prefixes
            source_new = _subnet_novelty(caller_nets, known_subnets, narrow, wide, site)

        # An SVID is issued to one pod, whose address does not change while it lives: one certificate from two
        # addresses is a copy, for as long as the certificate is remembered (a copy of the SVID its pod rotated
        # away from an hour ago is still a copy). Which one is the copy: the one away from the caller's usual
        # subnets; between two addresses inside them, the later one. So the pod itself is never the one counted,
        # even when the copy was used first.
        others = 0
        if elsewhere:
            if source_new > 0:
                others = elsewhere
            elif first != facts.address:
                first_net = subnets(first)[0]
                if first_net in caller_nets or (known_subnets is not None and first_net in known_subnets):
                    others = elsewhere

        svid_age = 0.0
        issued, expires = facts.issued_at, facts.expires_at
        if issued is not None and expires is not None and expires > issued:
            svid_age = max(0.0, (ts - issued) / (expires - issued))

        values = (
            edge_novelty, route_unusual, method_unusual, hour_unusual, rate_burst, ids_short, ids_long, id_walk,
            size_unusual, source_new, float(others), svid_age,
        )  # fmt: skip
        return [v if v < hi else hi for v, hi in zip(values, _HIGH, strict=True)]

    # --- writing --------------------------------------------------------------------------------------------

    def observe(self, facts: CallFacts, learning: Learning, baseline: Baseline = EMPTY) -> None:
        """Count a call policy let through as recent activity; learn from it what `learning` allows (`baseline`:
        the model's, which says which address ranges the site's pods use)."""
        ts = facts.ts
        key = (facts.caller, facts.callee)
        with self._lock:
            edge = _recall(self._edges, key)
            if edge is None or ts // 60 - edge.minute > self._idle_minutes:
                edge = _remember(self._edges, key, _Edge(), self._max_edges)
            minute = int(ts // 60)
            if minute > edge.minute:
                edge.minute_prev = edge.minute_count if minute == edge.minute + 1 else 0
                edge.minute_count = 0
                edge.minute = minute
            edge.minute_count += 1
            templates = edge.templates
            template = templates.get(facts.template)
            if template is None:
                if len(templates) >= _MAX_TEMPLATES:  # the rarest goes: a one-off path, not the edge's routes
                    del templates[min(templates, key=lambda k: _decayed(templates[k].rate, templates[k].rate_at, ts))]
                template = templates[facts.template] = _Template()
            if template is not None and facts.last_id:
                _walk(template, facts, True)  # before the id is counted: a walk takes only ids not seen lately
                _count_id(template, facts, self.window_s)
            if facts.certificate:
                self._seen_from(facts)

            if learning is Learning.NOTHING:  # `not learning & NOVELTY` builds an enum member: 1.4 µs a call
                return
            edge.learned += 1
            edge.rate = _decayed(edge.rate, edge.rate_at, ts) + 1.0
            edge.rate_at = max(ts, edge.rate_at)
            if learning & Learning.HOUR:
                edge.hours[int(ts // 3600 % 24)] += 1
            method: list[float] | None = None
            if template is not None:
                template.rate = _decayed(template.rate, template.rate_at, ts) + 1.0
                template.rate_at = max(ts, template.rate_at)
                method = template.methods.get(facts.method)
                if method is None:
                    if len(template.methods) < _MAX_METHODS:
                        method = template.methods[facts.method] = [1.0, ts, -1.0]
                else:
                    method[0] = _decayed(method[0], method[1], ts) + 1.0
                    method[1] = max(ts, method[1])
            self._learn_subnet(facts, baseline)

            if learning is not Learning.EVERYTHING:
                return
            calls = edge.minute_count + edge.minute_prev * (1.0 - (ts % 60) / 60)
            if calls > edge.peak:
                edge.peak = calls
            if method is not None and facts.size > method[2]:
                method[2] = facts.size

    def _seen_from(self, facts: CallFacts) -> None:
        addresses = _recall(self._certificates, facts.certificate)
        if addresses is None:
            addresses = _remember(self._certificates, facts.certificate, {}, self._max_identities)
        addresses[facts.address] = facts.ts
        if len(addresses) > _MAX_CERT_ADDRESSES:  # the owner (first, in insertion order) stays
            owner = next(iter(addresses))
            oldest = min((a for a in addresses if a != owner), key=addresses.__getitem__)
            del addresses[oldest]

    def _learn_subnet(self, facts: CallFacts, baseline: Baseline) -> None:
        """A new /24 (/64) becomes the caller's when it lies in the site's address space (a pod rescheduled onto
        another node of the mesh) or is the caller's first address. An address outside it is learned only once
        _SITE_WITNESSES identities came from its /16 (/48) with low risk: a new node pool hosts many workloads,
        one stolen SVID used from a laptop or another network is one identity, and stays `source_new` 2."""
        narrow, wide = subnets(facts.address)
        if not narrow:
            return
        known = _recall(self._subnets, facts.caller)
        if known is not None and (narrow in known or len(known) >= _MAX_SUBNETS):
            return
        inside = (
            (not known and not baseline.subnets(facts.caller))
            or (known is not None and wide in known)
            or wide in baseline.prefixes
            or wide in self._prefixes
        )
        if not inside:
            witnesses = _recall(self._witnesses, wide)
            if witnesses is None:
                witnesses = _remember(self._witnesses, wide, {}, _MAX_PREFIXES)
            witnesses[facts.caller] = None
            if len(witnesses) < _SITE_WITNESSES:
                return
            del self._witnesses[wide]
        if known is None:
            known = _remember(self._subnets, facts.caller, {}, self._max_identities)
        known[narrow] = None
        known[wide] = None
        _remember(self._prefixes, wide, None, _MAX_PREFIXES)


def _reads_only(edge: EdgeBaseline) -> bool:
    return edge.calls >= _READS_ONLY_CALLS and edge.methods.keys() <= SAFE_METHODS


def _subnet_novelty(
    baseline: frozenset[str], online: dict[str, None] | None, narrow: str, wide: str, site: bool
) -> float:
    """0 in a known /24 (/64) of the caller, 1 in a new one inside the caller's /16s (/48s) or the site's (`site`),
    2 outside the site's address space; 0 for a caller with no known address yet (its first address is learned,
    not judged)."""
    if not narrow or (not baseline and not online):
        return 0.0
    if narrow in baseline or (online is not None and narrow in online):
        return 0.0
    if site or wide in baseline or (online is not None and wide in online):
        return 1.0
    return 2.0


def _count_id(template: _Template, facts: CallFacts, window_s: float) -> None:
    encoded = facts.last_id.encode()
    short = int(facts.ts // window_s)
    if short > template.short_bucket:
        template.short_prev = template.short_bits if short == template.short_bucket + 1 else 0
        template.short_bits = 0
        template.short_bucket = short
    template.short_bits |= 1 << (zlib.crc32(encoded) % _SHORT_BITS)
    hour = int(facts.ts // _LONG_WINDOW_S)
    if hour > template.long_bucket:
        template.long_prev = template.long_bits if hour == template.long_bucket + 1 else 0
        template.long_bits = 0
        template.long_bucket = hour
    template.long_bits |= 1 << (zlib.crc32(encoded) % _LONG_BITS)


def _seen_lately(template: _Template, facts: CallFacts) -> bool:
    """Whether the template's long window (the last 1-2 hours) already holds this id (or, one time in a bitmap's fill
    share, another id with the same bit). Popular ids come back all the time, and chance walks through a popular
    range (ids 1-50 of a shop's products) would otherwise set a busy template's longest walk; an enumeration touches
    each id once, so skipping the odd id that shares a bit costs it one step, which the gap tolerance bridges."""
    hour = int(facts.ts // _LONG_WINDOW_S)
    if hour == template.long_bucket:
        bits = template.long_bits | template.long_prev
    elif hour == template.long_bucket + 1:
        bits = template.long_bits
    else:
        return False
    return bool(bits >> (zlib.crc32(facts.last_id.encode()) % _LONG_BITS) & 1)


def _walk(template: _Template, facts: CallFacts, learn: bool) -> int:
    """The length of the walk this id continues (0: none); with `learn`, extend it or start one.

    A walk's first step may be any stride up to _WALK_STEP; every later step must go the same way by the stride
    (the walk grows by one) or by a few strides, at most _WALK_GAP (it goes on, no longer): enumeration goes +1, +1,
    +3, +1, ..., while random ids that land within reach of a walk are mostly the gap steps, so chance walks
    through a popular id range stay short and one id a minute for an hour makes a walk of about 60. A step that
    divides the stride becomes it (a walk first seen across a gap). Ids seen on the template in the last hour or
    two (`_seen_lately`) start and extend no walk, but are scored by the one they continue: a popular id must
    not build chance walks, and an enumeration's id that shares a bit with another must not read as no walk.
    Up to _WALK_HEADS walks are followed at once, the shortest replaced, so interleaved unrelated ids do not break
    one."""
    number = _numeric(facts.last_id)
    if number is None:
        return 0
    learn = learn and not _seen_lately(template, facts)
    ts = facts.ts
    walks = template.walks
    for walk in walks:
        step = number - int(walk[0])
        if ts - walk[2] > _WALK_IDLE_S or step == 0:
            continue
        run = int(walk[1])
        stride = int(walk[3])
        if run == 0:
            if abs(step) > _WALK_STEP:
                continue
            stride = step
        elif step % stride == 0:
            if not 1 <= step // stride <= _WALK_GAP:
                continue
        elif stride % step == 0 and stride // step > 0:
            stride = step
        else:
            continue
        if step == stride:
            run += 1
        if learn:
            walk[0], walk[1], walk[2], walk[3] = number, run, ts, stride
        return run
    if learn:
        fresh = [float(number), 0.0, ts, 0.0]
        if len(walks) < _WALK_HEADS:
            walks.append(fresh)
        else:
            shortest = min(range(len(walks)), key=lambda i: walks[i][1] if ts - walks[i][2] <= _WALK_IDLE_S else -1)
            walks[shortest] = fresh
    return 0
