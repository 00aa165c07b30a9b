"""Data for the lead-qualification pipeline: 50 inbound leads, and what a company-data provider knows
about their companies.

Files::

    inbox/leads.csv           lead_id, received_at, contact, title, email, company, domain, message
                              (the team's input)
    provider/companies.json   the provider's records: profile, financials and news per domain
                              (served by the example's MCP server, company_data.py; never in the
                              workspace)

A few leads write from companies the provider does not know, two contacts come from one company, and
some messages are keen while others are students or vendors. How a lead scores is the rubric in the
team file (``SCORING``, below, is the same rubric as code). :func:`generate` returns the true ranking
(:class:`GroundTruth`); no file states it::

    python -m examples.leads.generate DIR [--seed 7] [--truth]
"""

from __future__ import annotations

import csv
import io
import json
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from examples import generator_main

LEADS = 50
TODAY = datetime(2026, 12, 1, tzinfo=UTC)
ICP_INDUSTRIES = ("software", "fintech", "logistics")
INDUSTRIES = (*ICP_INDUSTRIES, "retail", "education", "healthcare", "manufacturing")
DECISION_TITLES = ("VP Engineering", "Head of Platform", "CTO", "Director of Operations", "VP Sales")
OTHER_TITLES = ("Software Engineer", "Student", "Analyst", "Intern", "Account Executive")
NEWS_KINDS = ("funding", "hiring", "product", "layoffs", "lawsuit", "award")
_NAMES = (
    "Ada Park",
    "Bo Lindqvist",
    "Caro Mendes",
    "Dev Patel",
    "Eli Cohen",
    "Fatima Zahra",
    "Gus Moreau",
    "Hana Sato",
    "Ivo Novak",
    "Jas Kaur",
    "Kofi Mensah",
    "Lena Vogel",
    "Mo Haddad",
    "Nia Brooks",
    "Omar Said",
    "Pia Rossi",
    "Quin Tran",
    "Rosa Diaz",
    "Sven Berg",
    "Tara Singh",
)
_WORDS = (
    "Acme",
    "Bright",
    "Cedar",
    "Delta",
    "Ember",
    "Flux",
    "Granite",
    "Harbor",
    "Iris",
    "Juniper",
    "Kite",
    "Lumen",
    "Maple",
    "Nimbus",
    "Orbit",
    "Pioneer",
    "Quarry",
    "Ridge",
    "Summit",
    "Tidal",
    "Umber",
    "Vertex",
    "Willow",
    "Yonder",
    "Zephyr",
)
_SUFFIXES = ("Labs", "Systems", "Pay", "Freight", "Health", "Works", "Cloud", "Logic")
_KEEN = (
    "We are evaluating tools to run our agents in production this quarter; can we talk pricing?",
    "Our team needs an orchestration layer for 30+ internal agents. Who can we speak to?",
    "Looking for a self-hosted option before our security review in January. Demo next week?",
)
_COLD = (
    "Just curious how this works.",
    "I'm writing a thesis on multi-agent systems, could you answer a few questions?",
    "We offer outsourced QA services and would love to partner.",
)


@dataclass(frozen=True)
class Ranked:
    """One lead's true place: its score by the rubric and the facts that made it."""

    rank: int
    lead_id: str
    company: str
    score: int


@dataclass(frozen=True)
class GroundTruth:
    ranking: list[Ranked]
    #: leads whose company the provider does not know
    unknown: list[str]


def _score(title: str, record: dict[str, Any] | None) -> int:
    """The rubric (the team file's qualifier prompt says the same in words)."""
    if record is None:
        return 0
    profile, financials, news = record["profile"], record["financials"], record["news"]
    score = 0
    score += 30 if profile["industry"] in ICP_INDUSTRIES else 0
    score += 20 if 200 <= int(profile["employees"]) <= 5000 else 0
    growth = float(financials["revenue_growth_pct"])
    score += 20 if growth >= 30 else 10 if growth >= 10 else 0
    recent = [n for n in news if n["date"] >= (TODAY - timedelta(days=180)).strftime("%Y-%m-%d")]
    score += 15 if any(n["kind"] == "funding" for n in recent) else 0
    score += 10 if any(n["kind"] == "hiring" for n in recent) else 0
    score -= 30 if any(n["kind"] == "layoffs" for n in recent) else 0
    score += 10 if title in DECISION_TITLES else 0
    return score


def _company(rng: random.Random, name: str, domain: str) -> dict[str, Any]:
    industry = rng.choice(INDUSTRIES)
    employees = rng.choice((12, 40, 85, 150, 240, 420, 800, 1300, 2600, 4800, 9000, 22000))
    employees = int(employees * rng.uniform(0.85, 1.15))
    revenue = round(employees * rng.uniform(90_000, 260_000), -5)
    news = []
    for _ in range(rng.randint(0, 4)):
        kind = rng.choices(NEWS_KINDS, weights=(3, 3, 3, 1, 1, 1))[0]
        day = (TODAY - timedelta(days=rng.randint(5, 400))).strftime("%Y-%m-%d")
        headline = {
            "funding": f"{name} raises ${rng.choice((8, 15, 25, 40, 60, 120))}M "
            f"{rng.choice(('Series A', 'Series B', 'Series C'))}",
            "hiring": f"{name} plans to hire {rng.randint(20, 300)} engineers",
            "product": f"{name} launches "
            f"{rng.choice(('an API platform', 'a mobile app', 'an AI assistant'))}",
            "layoffs": f"{name} cuts {rng.randint(5, 25)}% of staff",
            "lawsuit": f"{name} faces a patent lawsuit",
            "award": f"{name} named a top workplace",
        }[kind]
        news.append({"date": day, "kind": kind, "headline": headline})
    news.sort(key=lambda n: str(n["date"]), reverse=True)
    return {
        "profile": {
            "domain": domain,
            "name": name,
            "industry": industry,
            "employees": employees,
            "founded": rng.randint(1995, 2022),
            "hq_country": rng.choice(("US", "DE", "GB", "NL", "SE", "IN", "BR", "JP")),
        },
        "financials": {
            "domain": domain,
            "revenue_usd": int(revenue),
            "revenue_growth_pct": round(rng.uniform(-15, 70), 1),
            "funding_total_usd": rng.choice((0, 5_000_000, 30_000_000, 90_000_000, 250_000_000)),
        },
        "news": news,
    }


def generate(folder: Path, *, seed: int = 7) -> GroundTruth:
    """Write ``inbox/leads.csv`` and ``provider/companies.json`` into ``folder``; return the true
    ranking."""
    rng = random.Random(seed)
    names = rng.sample([f"{w} {s}" for w in _WORDS for s in _SUFFIXES], 47)
    companies: dict[str, dict[str, Any]] = {}
    for name in names[:44]:
        domain = name.lower().replace(" ", "") + ".com"
        companies[domain] = _company(rng, name, domain)
    unknown_domains = [n.lower().replace(" ", "") + ".io" for n in names[44:]]  # not in the provider
    domains = [*companies, *unknown_domains]
    rows = []
    for n in range(LEADS):
        domain = domains[n] if n < len(domains) else rng.choice(list(companies))  # a few companies twice
        record = companies.get(domain)
        name = str(record["profile"]["name"]) if record else domain.split(".")[0].title()
        contact = rng.choice(_NAMES)
        keen = rng.random() < 0.6
        title = rng.choice(DECISION_TITLES if keen else OTHER_TITLES)
        first = contact.split()[0].lower()
        rows.append(
            {
                "lead_id": f"L-{n + 1:03d}",
                "received_at": (TODAY - timedelta(hours=rng.randint(1, 240))).strftime("%Y-%m-%dT%H:%MZ"),
                "contact": contact,
                "title": title,
                "email": f"{first}@{domain}"
                if rng.random() < 0.85
                else f"{first}.{rng.randint(1, 99)}@gmail.com",
                "company": name,
                "domain": domain,
                "message": rng.choice(_KEEN if keen else _COLD),
            }
        )

    def growth(row: dict[str, str]) -> float:
        record = companies.get(row["domain"])
        return float(record["financials"]["revenue_growth_pct"]) if record else -1e9

    # ties: the faster-growing company first, then the earlier lead
    scored = sorted(
        ((_score(r["title"], companies.get(r["domain"])), r) for r in rows),
        key=lambda pair: (-pair[0], -growth(pair[1]), pair[1]["lead_id"]),
    )
    ranking = [Ranked(n + 1, r["lead_id"], r["company"], s) for n, (s, r) in enumerate(scored)]
    folder.mkdir(parents=True, exist_ok=True)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    for part in ("inbox", "provider"):
        (folder / part).mkdir(exist_ok=True)
    (folder / "inbox" / "leads.csv").write_text(out.getvalue())
    (folder / "provider" / "companies.json").write_text(
        json.dumps(companies, indent=1, sort_keys=True) + "\n"
    )
    unknown = [r["lead_id"] for r in rows if r["domain"] not in companies]
    return GroundTruth(ranking, unknown)


def main(argv: list[str] | None = None) -> None:
    generator_main("leads", __doc__, generate, argv)


if __name__ == "__main__":
    main()
