"""Data for the quarterly board report: four departments' data in four shapes, for Q2 and Q3 2026.

Files::

    finance/ledger.sqlite     the general ledger: accounts(code, name, type) and
                              journal(entry_id, posted_on, account_code, amount, memo)
    sales/crm-2026-MM.csv     the CRM's monthly exports, April to September: deal_id, closed_on,
                              customer, region, stage (won, lost), amount_usd
    operations/shipments.jsonl  order_id, warehouse, status (delivered, cancelled), promised_on,
                              delivered_on
    hr/people.json            the HR system's extract: {"extracted_at": ..., "employees": [{id,
                              department, title, hired_on, left_on}]}

What makes them less than tidy, as real exports are: the ledger has reversals (negative entries), an
intercompany transfer account that is neither revenue nor cost, and entries posted after the
quarter; each CRM export repeats the previous month's late-closing deals (one deal, two rows); some
shipments were cancelled; people who left keep their record with ``left_on``. :func:`generate`
returns every figure of the report (:class:`GroundTruth`), computed from the rows as written::

    python -m examples.board.generate DIR [--seed 7] [--truth]
"""

from __future__ import annotations

import csv
import io
import json
import random
import sqlite3
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from examples import generator_main

QUARTERS = {"Q2": (date(2026, 4, 1), date(2026, 6, 30)), "Q3": (date(2026, 7, 1), date(2026, 9, 30))}
ACCOUNTS = [
    ("4000", "Subscription revenue", "revenue"),
    ("4100", "Services revenue", "revenue"),
    ("5000", "Hosting", "cogs"),
    ("5100", "Support staff", "cogs"),
    ("6000", "Salaries", "opex"),
    ("6100", "Marketing", "opex"),
    ("6200", "Office and travel", "opex"),
    ("9000", "Intercompany transfer", "transfer"),
]
REGIONS = ("EMEA", "North America", "APAC", "LATAM")
CUSTOMERS = ("Acme", "Globex", "Initech", "Umbrella", "Hooli", "Vandelay")
DEPARTMENTS = ("engineering", "sales", "support", "operations", "finance", "people")


@dataclass(frozen=True)
class Figures:
    """One quarter's figures, as the report states them."""

    revenue: float
    gross_margin_pct: float
    operating_expenses: float
    operating_income: float
    bookings: float
    deals_won: int
    win_rate_pct: float
    top_region: str
    shipments: int
    on_time_pct: float
    headcount: int
    hires: int
    departures: int
    attrition_pct: float


@dataclass(frozen=True)
class GroundTruth:
    q2: Figures
    q3: Figures


def _days(start: date, end: date, rng: random.Random) -> date:
    return start + timedelta(days=rng.randint(0, (end - start).days))


def _ledger(rng: random.Random) -> tuple[bytes, list[tuple[int, str, str, float, str]]]:
    entries: list[tuple[int, str, str, float, str]] = []
    growth = {"Q2": 1.0, "Q3": 1.18}
    for quarter, (start, end) in QUARTERS.items():
        scale = growth[quarter]
        for code, monthly in (
            ("4000", 560_000),
            ("4100", 90_000),
            ("5000", 82_000),
            ("5100", 47_000),
            ("6000", 230_000),
            ("6100", 58_000),
            ("6200", 14_000),
        ):
            for month in range(3):
                for _ in range(rng.randint(3, 6)):  # several postings a month
                    amount = round(monthly * scale / 4.5 * rng.uniform(0.6, 1.4), 2)
                    posted = _days(
                        start + timedelta(days=30 * month), start + timedelta(days=30 * month + 27), rng
                    )
                    entries.append(
                        (0, posted.isoformat(), code, amount, "invoice batch" if code < "5000" else "bill")
                    )
        for _ in range(3):  # reversals: a posting undone
            code = rng.choice(("4000", "6100"))
            amount = -round(rng.uniform(2_000, 9_000), 2)
            entries.append(
                (0, _days(start, end, rng).isoformat(), code, amount, "reversal of a duplicate posting")
            )
        entries.append(
            (
                0,
                _days(start, end, rng).isoformat(),
                "9000",
                round(rng.uniform(50_000, 90_000), 2),
                "intercompany transfer to the holding",
            )
        )
    for _ in range(4):  # posted in October: the next quarter's
        entries.append(
            (
                0,
                date(2026, 10, rng.randint(1, 20)).isoformat(),
                "4000",
                round(rng.uniform(20_000, 60_000), 2),
                "invoice batch",
            )
        )
    entries.sort(key=lambda e: (e[1], e[2], e[3]))
    entries = [(n + 1, *e[1:]) for n, e in enumerate(entries)]
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE accounts (code TEXT PRIMARY KEY, name TEXT NOT NULL, type TEXT NOT NULL)")
    db.execute(
        "CREATE TABLE journal (entry_id INTEGER PRIMARY KEY, posted_on TEXT NOT NULL, "
        "account_code TEXT NOT NULL REFERENCES accounts(code), amount NUMERIC(14,2) NOT NULL, memo TEXT)"
    )
    db.executemany("INSERT INTO accounts VALUES (?, ?, ?)", ACCOUNTS)
    db.executemany("INSERT INTO journal VALUES (?, ?, ?, ?, ?)", entries)
    db.commit()
    data = db.serialize()
    db.close()
    return data, entries


def generate(folder: Path, *, seed: int = 7) -> GroundTruth:
    """Write the four departments' data into ``folder``; return the report's true figures."""
    rng = random.Random(seed)
    for part in ("finance", "sales", "operations", "hr"):
        (folder / part).mkdir(parents=True, exist_ok=True)
    ledger, entries = _ledger(rng)
    (folder / "finance" / "ledger.sqlite").write_bytes(ledger)
    kinds = {code: kind for code, _, kind in ACCOUNTS}

    deals: list[dict[str, Any]] = []
    for quarter, (start, end) in QUARTERS.items():
        for n in range(rng.randint(70, 90) if quarter == "Q2" else rng.randint(85, 110)):
            won = rng.random() < (0.34 if quarter == "Q2" else 0.41)
            deals.append(
                {
                    "deal_id": f"D-{quarter}-{n + 1:03d}",
                    "closed_on": _days(start, end, rng).isoformat(),
                    "customer": f"{rng.choice(CUSTOMERS)} {rng.choice(('GmbH', 'Inc', 'Ltd', 'BV', 'KK'))} "
                    f"{rng.randint(1, 99)}",
                    "region": rng.choices(REGIONS, weights=(4, 5, 2, 1) if quarter == "Q3" else (5, 4, 2, 1))[
                        0
                    ],
                    "stage": "won" if won else "lost",
                    "amount_usd": round(rng.uniform(8_000, 120_000), 2),
                }
            )
    columns = ["deal_id", "closed_on", "customer", "region", "stage", "amount_usd"]
    by_month: dict[str, list[dict[str, Any]]] = {}
    for deal in deals:
        by_month.setdefault(str(deal["closed_on"])[:7], []).append(deal)
    months = sorted(by_month)
    for n, month in enumerate(months):
        rows = list(by_month[month])
        if n > 0:  # the export repeats the last days of the month before (deals booked late)
            rows += [d for d in by_month[months[n - 1]] if str(d["closed_on"])[8:] >= "27"]
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(sorted(rows, key=lambda d: str(d["deal_id"])))
        (folder / "sales" / f"crm-{month}.csv").write_text(out.getvalue())

    shipments: list[dict[str, Any]] = []
    for quarter, (start, end) in QUARTERS.items():
        late_share = 0.12 if quarter == "Q2" else 0.07
        for n in range(rng.randint(900, 1100)):
            promised = _days(start, end, rng)
            cancelled = rng.random() < 0.04
            late = rng.random() < late_share
            delivered = (
                promised + timedelta(days=rng.randint(1, 6))
                if late
                else promised - timedelta(days=rng.randint(0, 2))
            )
            shipments.append(
                {
                    "order_id": f"SO-{quarter}-{n + 1:05d}",
                    "warehouse": rng.choice(("Rotterdam", "Reno", "Osaka")),
                    "status": "cancelled" if cancelled else "delivered",
                    "promised_on": promised.isoformat(),
                    "delivered_on": None if cancelled else delivered.isoformat(),
                }
            )
    (folder / "operations" / "shipments.jsonl").write_text("".join(json.dumps(s) + "\n" for s in shipments))

    people: list[dict[str, Any]] = []
    for n in range(236):
        if n < 10:  # this year's hiring: a few a quarter
            hired = _days(*QUARTERS["Q2" if n < 4 else "Q3"], rng)
        else:
            hired = date(2019, 1, 1) + timedelta(days=rng.randint(0, 2650))
        left = None
        if rng.random() < 0.14:
            last = (date(2026, 10, 1) - hired).days
            left = hired + timedelta(days=rng.randint(min(60, last), last)) if last > 0 else None
        people.append(
            {
                "id": f"E{n + 1:04d}",
                "department": rng.choice(DEPARTMENTS),
                "title": "staff",
                "hired_on": hired.isoformat(),
                "left_on": left and left.isoformat(),
            }
        )
    extract = {"extracted_at": "2026-10-02T06:00:00Z", "employees": people}
    (folder / "hr" / "people.json").write_text(json.dumps(extract, indent=1) + "\n")

    def figures(quarter: str) -> Figures:
        start, end = QUARTERS[quarter]
        s, e = start.isoformat(), end.isoformat()
        booked = [j for j in entries if s <= j[1] <= e]
        revenue = round(sum(j[3] for j in booked if kinds[j[2]] == "revenue"), 2)
        cogs = round(sum(j[3] for j in booked if kinds[j[2]] == "cogs"), 2)
        opex = round(sum(j[3] for j in booked if kinds[j[2]] == "opex"), 2)
        closed = [d for d in deals if s <= str(d["closed_on"]) <= e]
        won = [d for d in closed if d["stage"] == "won"]
        regions: dict[str, float] = {}
        for d in won:
            regions[str(d["region"])] = regions.get(str(d["region"]), 0.0) + float(d["amount_usd"])
        sent = [x for x in shipments if s <= str(x["promised_on"]) <= e and x["status"] == "delivered"]
        on_time = sum(1 for x in sent if str(x["delivered_on"]) <= str(x["promised_on"]))
        at_end = [
            p for p in people if str(p["hired_on"]) <= e and (p["left_on"] is None or str(p["left_on"]) > e)
        ]
        at_start = [
            p for p in people if str(p["hired_on"]) < s and (p["left_on"] is None or str(p["left_on"]) >= s)
        ]
        hires = sum(1 for p in people if s <= str(p["hired_on"]) <= e)
        departures = sum(1 for p in people if p["left_on"] is not None and s <= str(p["left_on"]) <= e)
        average = (len(at_start) + len(at_end)) / 2
        return Figures(
            revenue=revenue,
            gross_margin_pct=round((revenue - cogs) / revenue * 100, 1),
            operating_expenses=opex,
            operating_income=round(revenue - cogs - opex, 2),
            bookings=round(sum(float(d["amount_usd"]) for d in won), 2),
            deals_won=len(won),
            win_rate_pct=round(len(won) / len(closed) * 100, 1),
            top_region=max(regions, key=lambda r: regions[r]),
            shipments=len(sent),
            on_time_pct=round(on_time / len(sent) * 100, 1),
            headcount=len(at_end),
            hires=hires,
            departures=departures,
            attrition_pct=round(departures / average * 100, 1),
        )

    return GroundTruth(q2=figures("Q2"), q3=figures("Q3"))


def main(argv: list[str] | None = None) -> None:
    generator_main("board", __doc__, generate, argv)


if __name__ == "__main__":
    main()
