"""Data for the vendor-contract compliance review: a vendor's MSA, the company's procurement policy,
the regulations it must meet, and what past negotiations achieved.

Files::

    inputs/contract/northwind-msa.txt     the contract: one numbered clause per line
                                          ("7. Limitation of Liability. ... six (6) months ...")
    inputs/policy/procurement-policy.csv  rule_id, heading, kind (min, max, phrase), value, unit,
                                          requirement
    inputs/regulations/requirements.csv   req_id, regulation, heading, kind, value, unit, requirement
    memory/deals/negotiations.csv         the past deals (the memory store ``deals``, never the
                                          workspace): deal, vendor, year, heading, vendor_initial,
                                          agreed, unit, agreed_text
    memory/deals/lessons.csv              what the grader rejected in past reviews: empty at first
                                          (criterion, kind, failed, sessions, latest; a dream fills it)

A clause meets a ``min`` rule when its number (the one in parentheses) is at least the value, a
``max`` rule when at most, and a ``phrase`` rule when it contains the phrase. :func:`generate` returns
the clauses that break a rule (:class:`GroundTruth`); no file says which::

    python -m examples.compliance.generate DIR [--seed 7] [--truth]
"""

from __future__ import annotations

import csv
import io
import random
from dataclasses import dataclass
from pathlib import Path

from examples import generator_main

WORDS = {
    2: "two", 3: "three", 5: "five", 6: "six", 7: "seven", 9: "nine", 10: "ten", 12: "twelve",
    18: "eighteen", 24: "twenty-four", 30: "thirty", 45: "forty-five", 48: "forty-eight", 60: "sixty",
    72: "seventy-two", 90: "ninety", 96: "ninety-six", 120: "one hundred twenty",
}  # fmt: skip


@dataclass(frozen=True)
class Rule:
    rule_id: str
    source: str  # policy or regulation
    regulation: str
    heading: str
    kind: str  # min, max, phrase
    value: str
    unit: str
    requirement: str


RULES = [
    Rule(
        "P-01",
        "policy",
        "",
        "Limitation of Liability",
        "min",
        "12",
        "months",
        "The vendor's liability cap is at least twelve months of fees.",
    ),
    Rule(
        "P-02",
        "policy",
        "",
        "Payment Terms",
        "min",
        "45",
        "days",
        "Invoices are payable in no less than 45 days.",
    ),
    Rule(
        "P-03",
        "policy",
        "",
        "Price Adjustments",
        "max",
        "5",
        "percent",
        "Yearly price increases are capped at 5%.",
    ),
    Rule("P-04", "policy", "", "Renewal", "max", "60", "days", "A non-renewal notice needs at most 60 days."),
    Rule(
        "P-05",
        "policy",
        "",
        "Termination for Convenience",
        "max",
        "90",
        "days",
        "We may terminate for convenience with at most 90 days' notice.",
    ),
    Rule(
        "P-06",
        "policy",
        "",
        "Insurance",
        "min",
        "5",
        "million USD",
        "The vendor carries at least $5M of cover.",
    ),
    Rule(
        "GDPR-28",
        "regulation",
        "GDPR Art. 28(2)",
        "Subprocessors",
        "phrase",
        "prior written",
        "",
        "A processor engages subprocessors only with the controller's prior written authorisation.",
    ),
    Rule(
        "GDPR-33",
        "regulation",
        "GDPR Art. 33",
        "Security Incidents",
        "max",
        "48",
        "hours",
        "Breaches reach us in time for our 72-hour notice to the authority: within 48 hours.",
    ),
    Rule(
        "GDPR-44",
        "regulation",
        "GDPR Art. 44",
        "Data Location",
        "phrase",
        "European Economic Area",
        "",
        "Personal data stays in the European Economic Area unless a transfer mechanism applies.",
    ),
    Rule(
        "DORA-30",
        "regulation",
        "DORA Art. 30(3)",
        "Audit",
        "phrase",
        "regulators",
        "",
        "Contracts for ICT services give the customer and its regulators access and audit rights.",
    ),
]


@dataclass(frozen=True)
class Breach:
    """A clause that breaks a rule."""

    clause: int
    heading: str
    rule_id: str
    found: str  # the clause's number, or the phrase it lacks


@dataclass(frozen=True)
class GroundTruth:
    breaches: list[Breach]
    #: the past deals the precedent for each breached heading comes from (heading -> deal)
    precedents: dict[str, str]


def _number(n: int) -> str:
    return f"{WORDS.get(n, str(n))} ({n})"


def _clauses(rng: random.Random) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """The contract's clauses (heading, body) in order, and the value each rule's clause got."""
    liability = rng.choice((6, 9, 12, 24))
    payment = rng.choice((30, 45, 60))
    price = rng.choice((3, 5, 7, 9))
    renewal = rng.choice((30, 60, 90, 120))
    termination = rng.choice((30, 60, 90, 120))
    insurance = rng.choice((2, 3, 5, 10))
    incident = rng.choice((24, 48, 72, 96))
    subprocessors = rng.random() < 0.4
    eea = rng.random() < 0.5
    regulators = rng.random() < 0.4
    values = {
        "P-01": str(liability),
        "P-02": str(payment),
        "P-03": str(price),
        "P-04": str(renewal),
        "P-05": str(termination),
        "P-06": str(insurance),
        "GDPR-33": str(incident),
        "GDPR-28": "prior written" if subprocessors else "",
        "GDPR-44": "European Economic Area" if eea else "",
        "DORA-30": "regulators" if regulators else "",
    }
    clauses = [
        ("Definitions", "Capitalised terms have the meanings given in Schedule 1."),
        ("Services", "Vendor provides the hosted analytics platform described in each Order Form."),
        ("Fees", "Customer pays the fees set out in each Order Form, in US dollars."),
        ("Payment Terms", f"Undisputed invoices are payable within {_number(payment)} days of receipt."),
        ("Price Adjustments", f"Vendor may increase the fees once a year by up to {_number(price)} percent."),
        (
            "Term",
            "This Agreement starts on the Effective Date and runs for an initial term of two (2) years.",
        ),
        (
            "Renewal",
            "This Agreement renews for successive one-year terms unless either party gives notice of "
            f"non-renewal at least {_number(renewal)} days before the end of the then-current term.",
        ),
        (
            "Termination for Convenience",
            "Customer may terminate this Agreement for convenience on "
            f"{_number(termination)} days' written notice.",
        ),
        (
            "Confidentiality",
            "Each party keeps the other's Confidential Information confidential for five (5) years.",
        ),
        (
            "Data Protection",
            "Vendor processes Customer Personal Data only on Customer's documented instructions.",
        ),
        (
            "Subprocessors",
            "Vendor may engage subprocessors "
            + (
                "only with Customer's prior written authorisation."
                if subprocessors
                else "and will inform Customer of any change by updating its website."
            ),
        ),
        (
            "Security Incidents",
            f"Vendor notifies Customer of a Security Incident within {_number(incident)} hours "
            "of becoming aware of it.",
        ),
        (
            "Audit",
            "Vendor allows audits by Customer"
            + (
                " and its regulators, on reasonable notice."
                if regulators
                else ", once a year, on thirty (30) days' notice."
            ),
        ),
        (
            "Data Location",
            "Vendor stores and processes Customer Personal Data "
            + ("only in the European Economic Area." if eea else "in the data centres of its choice."),
        ),
        (
            "Limitation of Liability",
            "Each party's total liability under this Agreement shall not exceed the fees "
            f"paid in the {_number(liability)} months preceding the claim.",
        ),
        ("Indemnification", "Vendor indemnifies Customer against third-party claims of infringement."),
        (
            "Insurance",
            f"Vendor maintains professional liability insurance of at least {_number(insurance)} "
            "million US dollars.",
        ),
        ("Governing Law", "This Agreement is governed by the laws of the State of New York."),
    ]
    return clauses, values


def _breaks(rule: Rule, value: str) -> bool:
    if rule.kind == "phrase":
        return not value
    number, bound = int(value), int(rule.value)
    return number < bound if rule.kind == "min" else number > bound


def _table(header: list[str], rows: list[list[object]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


def generate(folder: Path, *, seed: int = 7) -> GroundTruth:
    """Write the contract, the policy, the regulations and the past deals into ``folder``."""
    rng = random.Random(seed)
    clauses, values = _clauses(rng)
    inputs = folder / "inputs"
    for part in ("contract", "policy", "regulations"):
        (inputs / part).mkdir(parents=True, exist_ok=True)
    (folder / "memory" / "deals").mkdir(parents=True, exist_ok=True)
    contract = ["MASTER SERVICES AGREEMENT between Northwind Analytics Ltd (Vendor) and the Customer", ""]
    contract += [f"{n}. {heading}. {body}" for n, (heading, body) in enumerate(clauses, 1)]
    (inputs / "contract" / "northwind-msa.txt").write_text("\n".join(contract) + "\n")
    policy = [r for r in RULES if r.source == "policy"]
    regulation = [r for r in RULES if r.source == "regulation"]
    (inputs / "policy" / "procurement-policy.csv").write_text(
        _table(
            ["rule_id", "heading", "kind", "value", "unit", "requirement"],
            [[r.rule_id, r.heading, r.kind, r.value, r.unit, r.requirement] for r in policy],
        )
    )
    (inputs / "regulations" / "requirements.csv").write_text(
        _table(
            ["req_id", "regulation", "heading", "kind", "value", "unit", "requirement"],
            [
                [r.rule_id, r.regulation, r.heading, r.kind, r.value, r.unit, r.requirement]
                for r in regulation
            ],
        )
    )
    deals = []
    precedents: dict[str, str] = {}
    vendors = ("Globex", "Initech", "Umbrella", "Hooli", "Vandelay", "Stark")
    for rule in RULES:
        best: tuple[float, str] | None = None
        for _ in range(rng.randint(1, 3)):
            vendor, year = rng.choice(vendors), rng.randint(2021, 2025)
            deal = f"{vendor} {rng.choice(('MSA', 'SaaS agreement', 'DPA'))} {year}"
            if rule.kind == "phrase":
                initial, agreed, text = "", "", f"{rule.value}: accepted after review"
                score = float(year)
            else:
                bound = int(rule.value)
                step = max(1, bound // 4)
                agreed_n = (
                    bound + step * rng.randint(0, 2)
                    if rule.kind == "min"
                    else max(1, bound - step * rng.randint(0, 2))
                )
                initial_n = agreed_n - 2 * step if rule.kind == "min" else agreed_n + 2 * step
                initial, agreed, text = str(max(initial_n, 1)), str(agreed_n), ""
                score = float(agreed_n if rule.kind == "min" else -agreed_n) + year / 10_000
            deals.append([deal, vendor, year, rule.heading, initial, agreed, rule.unit, text])
            if best is None or score > best[0]:
                best = (score, deal)
        assert best is not None
        precedents[rule.heading] = best[1]
    # what the grader rejected before: nothing yet (a dream over past reviews fills it)
    (folder / "memory" / "deals" / "lessons.csv").write_text("criterion,kind,failed,sessions,latest\n")
    (folder / "memory" / "deals" / "negotiations.csv").write_text(
        _table(
            ["deal", "vendor", "year", "heading", "vendor_initial", "agreed", "unit", "agreed_text"], deals
        )
    )
    number = {heading: n for n, (heading, _) in enumerate(clauses, 1)}
    breaches = [
        Breach(number[r.heading], r.heading, r.rule_id, values[r.rule_id])
        for r in RULES
        if _breaks(r, values[r.rule_id])
    ]
    breaches.sort(key=lambda b: (b.clause, b.rule_id))
    return GroundTruth(breaches, {b.heading: precedents[b.heading] for b in breaches})


def main(argv: list[str] | None = None) -> None:
    generator_main("compliance", __doc__, generate, argv)


if __name__ == "__main__":
    main()
