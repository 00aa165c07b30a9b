"""Data for one incident: a deploy that makes one service fail, and everything it leaves behind.

One day (2024-05-14, UTC) of six services: ``gateway``, ``catalog``, ``search``, ``checkout``,
``payments`` and ``accounts``. In the afternoon a ``payments`` deploy starts timing out on its card
gateway: a burst of ERROR lines with one signature, 5xx statuses, its error rate and p99 latency up,
``checkout`` failing downstream, customers filing tickets. A rollback ends it. Four files::

    deploys.csv    deploy_id, service, version, deployed_at, author, status   (about 30 deploys)
    app.jsonl      time, service, level, status, route, latency_ms, msg, trace_id   (50,000 lines)
    metrics.csv    minute, service, metric, value   (error_rate, p99_latency_ms, rps; every minute)
    tickets.json   [{ticket_id, customer_id, created_at, category, subject, body}, ...]

The answer is what :func:`generate` returns (:class:`GroundTruth`); no file states it. The same seed
gives byte-identical files::

    python -m examples.incident.generate DIR [--seed 7] [--truth]
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import msgspec

DATE = "2024-05-14"
DAY_MS = 24 * 3600 * 1000
MINUTES = 24 * 60
LOG_LINES = 50_000
FAILING = "payments"
SIGNATURE = "PaymentGatewayTimeout: upstream card-gateway timed out after 3000ms"
DOWNSTREAM = "checkout"
DOWNSTREAM_ERROR = "UpstreamError: payments POST /v1/charges failed with 504"
METRIC = "error_rate"
FILES = ("deploys.csv", "app.jsonl", "metrics.csv", "tickets.json")


@dataclass(frozen=True)
class GroundTruth:
    """What happened, as the data shows it (times as they are written in the files)."""

    deploy_id: str
    deployed_at: str
    service: str
    version: str
    error_signature: str
    first_error_at: str
    last_error_at: str
    affected_customers: int
    metric: str


@dataclass(frozen=True)
class _Service:
    name: str
    share: float  # of the background log lines
    routes: tuple[str, ...]
    latency_ms: float  # median
    p99_ms: float
    peak_rps: float
    error_rate: float  # baseline
    error: str  # its usual, occasional ERROR
    version: tuple[int, int, int]  # at midnight


SERVICES = (
    _Service(
        "gateway",
        0.30,
        ("GET /", "GET /api/v1/session", "POST /api/v1/events"),
        18,
        120,
        420,
        0.0012,
        "UpstreamResetError: connection reset by peer",
        (3, 8, 2),
    ),
    _Service(
        "catalog",
        0.22,
        ("GET /v1/products", "GET /v1/products/{id}", "GET /v1/categories"),
        35,
        210,
        260,
        0.0010,
        "CacheTimeout: redis GET timed out after 50ms",
        (1, 22, 4),
    ),
    _Service(
        "search",
        0.17,
        ("GET /v1/search", "GET /v1/suggest"),
        60,
        380,
        180,
        0.0020,
        "QueryTimeout: elasticsearch query exceeded 2000ms",
        (5, 3, 1),
    ),
    _Service(
        "checkout",
        0.12,
        ("POST /v1/cart/items", "GET /v1/cart", "POST /v1/checkout/confirm"),
        80,
        450,
        70,
        0.0025,
        "InventoryConflict: sku already reserved by another cart",
        (4, 1, 9),
    ),
    _Service(
        "payments",
        0.11,
        ("POST /v1/charges", "GET /v1/charges/{id}", "POST /v1/refunds"),
        140,
        620,
        45,
        0.0020,
        "IdempotencyConflict: key reused with a different request body",
        (2, 14, 3),
    ),
    _Service(
        "accounts",
        0.08,
        ("POST /v1/login", "GET /v1/me", "POST /v1/token/refresh"),
        25,
        160,
        90,
        0.0015,
        "TokenRefreshError: refresh token expired or revoked",
        (6, 0, 12),
    ),
)
_BY_NAME = {s.name: s for s in SERVICES}
_WARNINGS = (
    (200, "slow request: latency budget exceeded"),
    (200, "retrying upstream call (attempt 2 of 3)"),
    (429, "client rate limited"),
)
_AUTHORS = ("a.okafor", "m.lindqvist", "j.chen", "s.patel", "r.garcia", "k.novak", "t.ishikawa", "l.dubois")


@dataclass(frozen=True)
class _Timeline:
    """Milliseconds since midnight."""

    deployed: int
    first_error: int
    rollback: int
    last_error: int


def generate(directory: Path, *, seed: int = 7) -> GroundTruth:
    """Write the four data files into ``directory`` (created if need be) and return what happened."""
    rng = random.Random(seed)
    deployed = (13 * 3600 + rng.randrange(150 * 60)) * 1000  # 13:00 to 15:30
    first_error = deployed + rng.randrange(35_000, 90_000)
    rollback = deployed + rng.randrange(38, 52) * 60_000 + rng.randrange(60) * 1000
    timeline = _Timeline(deployed, first_error, rollback, rollback + rng.randrange(20_000, 60_000))

    deploys, bad = _deploys(rng, timeline)
    logs = _logs(rng, timeline)
    metrics = _metrics(rng, timeline)
    tickets, customers = _tickets(rng, timeline)

    directory.mkdir(parents=True, exist_ok=True)
    for name, text in zip(FILES, (deploys, logs, metrics, tickets), strict=True):
        (directory / name).write_bytes(text.encode())
    return GroundTruth(
        deploy_id=bad[0],
        deployed_at=bad[1],
        service=FAILING,
        version=bad[2],
        error_signature=SIGNATURE,
        first_error_at=_stamp(timeline.first_error),
        last_error_at=_stamp(timeline.last_error),
        affected_customers=customers,
        metric=METRIC,
    )


def _stamp(ms: int, *, millis: bool = True) -> str:
    seconds, milli = divmod(ms, 1000)
    hours, rest = divmod(seconds, 3600)
    text = f"{DATE}T{hours:02d}:{rest // 60:02d}:{rest % 60:02d}"
    return f"{text}.{milli:03d}Z" if millis else f"{text}Z"


def _diurnal(minute: int) -> float:
    """Traffic by time of day: a night floor and an afternoon peak (1.25 at 14:00)."""
    return 0.25 + math.exp(-(((minute / 60 - 14) / 4) ** 2))


def _csv(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


# --- deploys ---------------------------------------------------------------------------------------


def _deploys(rng: random.Random, t: _Timeline) -> tuple[str, tuple[str, str, str]]:
    """deploys.csv, and the bad deploy's (id, time, version)."""
    second = 1000
    slots: list[tuple[int, str, str]] = [
        (t.deployed, FAILING, "bad"),
        (t.rollback, FAILING, "rollback"),
        (t.rollback + rng.randrange(150, 200) * 60_000, FAILING, "fix"),
        ((9 * 3600 + rng.randrange(9000)) * second, FAILING, "normal"),
        (t.deployed - rng.randrange(4 * 60, 14 * 60) * second, DOWNSTREAM, "normal"),  # just before
    ]
    failed_at = (10 * 3600 + rng.randrange(7200)) * second
    slots += [
        (failed_at, "search", "failed"),
        (failed_at + rng.randrange(1200, 2400) * second, "search", "normal"),
    ]
    for name in ("gateway", "catalog"):  # the overnight pipeline
        slots.append(((1 * 3600 + rng.randrange(4 * 3600)) * second, name, "normal"))
    others = [s.name for s in SERVICES if s.name != FAILING]
    while len(slots) < 30:
        at = (7 * 3600 + 1800 + rng.randrange(12 * 3600)) * second  # working hours, 07:30 to 19:30
        service = rng.choice(others)
        if t.deployed - 3_600_000 < at < t.last_error + 600_000:
            continue  # keep the incident's hour clear of unrelated changes, but for the one above
        if any(abs(at - when) < 1_800_000 for when, name, _ in slots if name == service):
            continue  # a team deploys at most every half hour
        slots.append((at, service, "normal"))
    slots.sort()

    current = {s.name: s.version for s in SERVICES}
    before_bad = current[FAILING]
    retry: dict[str, tuple[int, int, int]] = {}
    ids: list[str] = []
    rows: list[tuple[str, ...]] = []
    bad = ("", "", "")
    for at, service, kind in slots:
        major, minor, patch = current[service]
        if kind == "bad":
            before_bad, version = current[service], (major, minor + 1, 0)
        elif kind == "rollback":
            version = before_bad
        elif kind == "fix":
            version = (major, minor + 1, 1)
        else:
            version = retry.pop(service, (major, minor, patch + 1))
        if kind == "failed":
            retry[service] = version
        else:
            current[service] = version
        deploy_id = f"dpl-{rng.getrandbits(24):06x}"
        while deploy_id in ids:
            deploy_id = f"dpl-{rng.getrandbits(24):06x}"
        ids.append(deploy_id)
        text = ".".join(str(n) for n in version)
        stamp = _stamp(at, millis=False)
        status = "failed" if kind == "failed" else "succeeded"
        rows.append((deploy_id, service, text, stamp, rng.choice(_AUTHORS), status))
        if kind == "bad":
            bad = (deploy_id, stamp, text)
    header = ("deploy_id", "service", "version", "deployed_at", "author", "status")
    return _csv(header, rows), bad


# --- logs ------------------------------------------------------------------------------------------


class _LogLine(msgspec.Struct):
    """One app.jsonl line, its keys in this order."""

    time: str
    service: str
    level: str
    status: int
    route: str
    latency_ms: int
    msg: str
    trace_id: str


def _trace(rng: random.Random) -> str:
    return f"{rng.getrandbits(128):032x}"


def _logs(rng: random.Random, t: _Timeline) -> str:
    """app.jsonl: background traffic all day, and the burst of the incident."""
    records: list[tuple[int, str, str, int, str, int, str, str]] = []
    span = t.last_error - t.first_error
    failures = int(span / 60_000 * rng.uniform(55, 65))
    downstream = int(failures * 0.3)

    # the burst: the first and last failures are the incident's edges
    edges = [t.first_error, t.last_error]
    for at in edges + [t.first_error + rng.randrange(span) for _ in range(failures - 2)]:
        status = 504 if rng.random() < 0.8 else 502
        latency = 3000 + rng.randrange(15)
        records.append((at, FAILING, "ERROR", status, "POST /v1/charges", latency, SIGNATURE, _trace(rng)))
    for _ in range(downstream):
        at = t.first_error + 200 + rng.randrange(span)
        latency = 3020 + rng.randrange(60)
        route = "POST /v1/checkout/confirm"
        records.append((at, DOWNSTREAM, "ERROR", 502, route, latency, DOWNSTREAM_ERROR, _trace(rng)))

    count = LOG_LINES - len(records)
    services = rng.choices(SERVICES, weights=[s.share for s in SERVICES], k=count)
    minutes = rng.choices(range(MINUTES), weights=[_diurnal(m) for m in range(MINUTES)], k=count)
    for service, minute in zip(services, minutes, strict=True):
        at = minute * 60_000 + rng.randrange(60_000)
        route = rng.choice(service.routes)
        took = rng.lognormvariate(math.log(service.latency_ms), 0.45)
        roll = rng.random()
        if roll < service.error_rate:
            level, status, msg = "ERROR", rng.choice((500, 503)), service.error
        elif roll < service.error_rate + 0.006:
            level, (status, msg) = "WARN", rng.choice(_WARNINGS)
            took *= 4
        else:
            level, msg = "INFO", "request completed"
            status = 201 if route.startswith("POST") and rng.random() < 0.5 else 200
            if route.startswith("GET") and rng.random() < 0.01:
                status = 404
        records.append((at, service.name, level, status, route, round(took), msg, _trace(rng)))

    records.sort(key=lambda r: r[0])
    # msgspec writes the same compact JSON as json.dumps does for this ASCII text, several times faster
    encode = msgspec.json.encode
    return (b"\n".join([encode(_LogLine(_stamp(r[0]), *r[1:])) for r in records]) + b"\n").decode()


# --- metrics ---------------------------------------------------------------------------------------


def _metrics(rng: random.Random, t: _Timeline) -> str:
    """metrics.csv: error_rate, p99_latency_ms and rps of every service, every minute."""
    first, last = t.first_error // 60_000, t.last_error // 60_000
    reindex = 9 * 60 + 30 + rng.randrange(60)  # a short, harmless search p99 bump in the morning
    peak = max(_diurnal(m) for m in range(MINUTES))
    rows: list[tuple[str, ...]] = []
    for minute in range(MINUTES):
        stamp = _stamp(minute * 60_000, millis=False)
        for s in SERVICES:
            rps = s.peak_rps * _diurnal(minute) / peak * (1 + rng.gauss(0, 0.04))
            error_rate = s.error_rate * max(0.0, 1 + rng.gauss(0, 0.25))
            p99 = s.p99_ms * (1 + rng.gauss(0, 0.06))
            if first <= minute <= last and s.name == FAILING:
                error_rate = min(0.6, max(0.2, rng.gauss(0.31, 0.025)))
                p99 = 3000 + rng.uniform(20, 180)
                rps *= 1.25  # clients retry
            elif first <= minute <= last and s.name == DOWNSTREAM:
                error_rate = max(0.03, rng.gauss(0.055, 0.008))
                p99 = 3100 + rng.uniform(0, 200)
            elif s.name == "search" and reindex <= minute < reindex + 6:
                p99 *= 2.2
            rows += [
                (stamp, s.name, "error_rate", f"{error_rate:.4f}"),
                (stamp, s.name, "p99_latency_ms", f"{p99:.0f}"),
                (stamp, s.name, "rps", f"{rps:.1f}"),
            ]
    return _csv(("minute", "service", "metric", "value"), rows)


# --- tickets ---------------------------------------------------------------------------------------

_INCIDENT_SUBJECTS = (
    "Payment failed at checkout",
    "Card payment keeps failing",
    "Can't complete my order - payment error",
    "Checkout says my payment could not be processed",
    "Payment times out",
    "Was I charged? Order not confirmed",
)
_INCIDENT_BODIES = (
    "I tried to pay for order #{order} {n} times and every time the page spins for a few seconds and "
    'then says "We couldn\'t process your payment". My card works everywhere else.',
    "Checkout hangs on the payment step and then fails. Order #{order}. Please fix this, I need the "
    "items this week.",
    "Payment for order #{order} failed with an error after a long wait. I'm not sure if my card was "
    "charged. Can you check?",
    "Every attempt to pay ends with a timeout message. Tried two different cards. Order #{order}.",
)
_FOLLOW_UPS = (
    "Following up on my earlier ticket: still can't pay for order #{order}. Is something broken on your "
    "side?",
    "Tried again just now, same error. Order #{order}. This is the {nth} time I'm writing.",
)
_NOISE = {
    "account": (
        ("Can't reset my password", "The reset email never arrives. I checked spam."),
        ("Change the email on my account", "I'd like to use a new address for my account."),
        ("Two-factor codes not arriving", "SMS codes stopped arriving since yesterday."),
    ),
    "shipping": (
        ("Where is my order?", "Order #{order} still shows 'preparing' after four days."),
        ("Wrong delivery address", "I made a typo in the address for order #{order}, can you change it?"),
        ("Package arrived damaged", "The box for order #{order} was crushed and one item is broken."),
    ),
    "billing": (
        ("Invoice shows the wrong company name", "Please reissue the invoice for order #{order}."),
        ("Need a VAT invoice", "Can I get a VAT invoice for order #{order}?"),
    ),
    "product": (
        ("Size guide question", "Does the medium run small? Looking at order #{order} items."),
        ("Item out of stock", "When will the item from order #{order} be back in stock?"),
    ),
    "other": (
        ("Feedback on the new app", "The new app layout is nice but search is harder to find."),
        ("Partnership enquiry", "We'd like to talk about a reseller partnership."),
    ),
}
_NOISE_PAYMENTS = (
    ("Card declined", "My bank declined the card for order #{order}; the bank says it was a fraud check."),
    ("How do I update my saved card?", "My card expired and I can't find where to change it."),
    ("Refund not received", "I returned order #{order} two weeks ago and have no refund yet."),
)


def _customer(rng: random.Random, used: set[str]) -> str:
    while True:
        customer = f"cus_{rng.randrange(100_000, 1_000_000)}"
        if customer not in used:
            used.add(customer)
            return customer


def _tickets(rng: random.Random, t: _Timeline) -> tuple[str, int]:
    """tickets.json, and how many distinct customers filed a ticket about the incident."""
    tickets: list[tuple[int, str, str, str, str]] = []  # created (s), customer, category, subject, body
    used: set[str] = set()

    def order() -> str:
        return str(rng.randrange(1_000_000, 10_000_000))

    affected = rng.randrange(18, 29)
    opens, closes = t.first_error // 1000 + 180, t.last_error // 1000 + 600
    latest = t.last_error // 1000 + 45 * 60  # customers write while it fails, and a while after
    for _ in range(affected):
        customer, number = _customer(rng, used), order()
        at = rng.randrange(opens, closes)
        body = rng.choice(_INCIDENT_BODIES).format(order=number, n=rng.choice(("two", "three", "four")))
        tickets.append((at, customer, "payments", rng.choice(_INCIDENT_SUBJECTS), body))
        for nth in ("second", "third")[: rng.choices((0, 1, 2), weights=(6, 3, 1))[0]]:
            at = min(at + rng.randrange(8 * 60, 25 * 60), latest)
            follow = rng.choice(_FOLLOW_UPS).format(order=number, nth=nth)
            tickets.append((at, customer, "payments", "Re: payment still failing", follow))

    categories = list(_NOISE)
    busy = [_diurnal(m) for m in range(MINUTES)]
    for _ in range(60):
        minute = rng.choices(range(MINUTES), weights=busy)[0]
        category = rng.choices(categories, weights=[3, 3, 2, 2, 1])[0]
        subject, body = rng.choice(_NOISE[category])
        at = minute * 60 + rng.randrange(60)
        tickets.append((at, _customer(rng, used), category, subject, body.format(order=order())))
    quiet = [
        (6 * 3600, t.first_error // 1000 - 2 * 3600),
        (t.last_error // 1000 + 3 * 3600, DAY_MS // 1000 - 60),
    ]
    for start, stop in quiet + quiet[:1]:  # payments tickets on an ordinary day, far from the incident
        subject, body = rng.choice(_NOISE_PAYMENTS)
        at = rng.randrange(start, stop)
        tickets.append((at, _customer(rng, used), "payments", subject, body.format(order=order())))

    tickets.sort(key=lambda ticket: ticket[0])
    records = [
        {
            "ticket_id": f"TCK-{48_210 + n}",
            "customer_id": customer,
            "created_at": _stamp(at * 1000, millis=False),
            "category": category,
            "subject": subject,
            "body": body,
        }
        for n, (at, customer, category, subject, body) in enumerate(tickets)
    ]
    return json.dumps(records, indent=2) + "\n", affected


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m examples.incident.generate", description=__doc__)
    parser.add_argument("directory", type=Path, help="where to write the data files")
    parser.add_argument("--seed", type=int, default=7, help="the random seed (default: 7)")
    parser.add_argument("--truth", action="store_true", help="also print what happened (the answer)")
    args = parser.parse_args(argv)
    truth = generate(args.directory, seed=args.seed)
    for name in FILES:
        path = args.directory / name
        print(f"{path.stat().st_size:>10}  {path}")
    if args.truth:
        print(json.dumps(asdict(truth), indent=2))


if __name__ == "__main__":
    main()
