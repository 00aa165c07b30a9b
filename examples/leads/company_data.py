"""A company-data provider's API, for the leads example: an MCP server (stdio) over
provider/companies.json.

    python -m examples.leads.company_data [--data DIR]

Three tools, each looked up by a company's web domain (``acmelabs.com``), each answering one line of
JSON (so the answers for many companies, one per line, are a JSON Lines file as they are):

- ``company_profile(domain)``: name, industry, employees, founded, hq_country;
- ``financials(domain)``: revenue_usd, revenue_growth_pct (year on year), funding_total_usd;
- ``news(domain)``: the company's news, newest first: date, kind (funding, hiring, product, layoffs,
  lawsuit, award) and headline.

A domain the provider does not know is an answer too, ``{"domain": ..., "found": false}``: a lead from
an unknown company is a fact to report, not a failure. A team file gives the server to an agent
(``[[agents.mcp_servers]]``); the model sees its tools as ``companydata__<tool>``.

The data folder is ``--data DIR``, else ``$LEADS_DATA``, else the example's standard folder
(``data_dir()/examples/leads``, generated there with the default seed if need be).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Annotated, Any

from mcp.types import ToolAnnotations
from pydantic import Field

from examples.leads import ensure_data, standard_data
from examples.mcp_server import StrictServer

DomainArg = Annotated[str, Field(description="The company's web domain, like acmelabs.com.")]
READ_ONLY = ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=False)


def line(document: dict[str, Any]) -> str:
    """One line of JSON."""
    return json.dumps(document, separators=(", ", ": "))


def build_server(companies: dict[str, dict[str, Any]]) -> StrictServer:
    server = StrictServer(
        "companydata",
        instructions="A company-data provider: profiles, financials and news of companies, by web domain.",
        log_level="WARNING",
    )

    def known(domain: str, part: str) -> dict[str, Any]:
        key = domain.strip().lower().removeprefix("www.")
        record = companies.get(key)
        if record is None:
            return {"domain": key, "found": False}
        found: Any = record[part]
        return {"domain": key, "found": True, **(found if isinstance(found, dict) else {part: found})}

    @server.tool(annotations=READ_ONLY, structured_output=False)
    def company_profile(domain: DomainArg) -> str:
        """The company's profile: name, industry, employees, founded (year) and hq_country."""
        return line(known(domain, "profile"))

    @server.tool(annotations=READ_ONLY, structured_output=False)
    def financials(domain: DomainArg) -> str:
        """The company's last fiscal year: revenue_usd, revenue_growth_pct (year on year, in percent)
        and funding_total_usd (all funding raised so far)."""
        return line(known(domain, "financials"))

    @server.tool(annotations=READ_ONLY, structured_output=False)
    def news(domain: DomainArg) -> str:
        """The company's news, newest first, as `news`: a list of {date, kind, headline}; kind is one of
        funding, hiring, product, layoffs, lawsuit, award."""
        return line(known(domain, "news"))

    return server


def data_folder(given: Path | None) -> Path:
    """``--data``, else ``$LEADS_DATA``, else the standard folder (generated there if need be)."""
    if given is not None:
        return given
    if env := os.environ.get("LEADS_DATA"):
        return Path(env).expanduser()
    return ensure_data(standard_data())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m examples.leads.company_data", description=__doc__)
    parser.add_argument(
        "--data", type=Path, help="the data folder, with provider/companies.json (default: see above)"
    )
    args = parser.parse_args(argv)
    path = data_folder(args.data) / "provider" / "companies.json"
    try:
        companies = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        parser.exit(1, f"{parser.prog}: error: cannot read {path}: {exc}\n")
    build_server(companies).run("stdio")


if __name__ == "__main__":
    main()
