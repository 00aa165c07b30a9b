"""The ``staffwork`` command line: the app, its global options, and every command in the order
``--help`` lists them (each module holds its commands; none imports this one).

Every error is one line on stderr naming the offending value, and a non-zero exit code;
``--verbose`` adds the traceback.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from actors.cli import admin, serve, sessions, trace
from actors.cli.common import State, err
from actors.cli.dream import dream_app
from actors.cli.fs import fs_app
from actors.cli.memory import memory_app
from actors.cli.webhooks import webhooks_app
from bus.errors import StaffworkError
from bus.logs import configure_logging

app = typer.Typer(
    name="staffwork",
    help="Multiagent orchestration with Claude on NATS: a lead agent, parallel specialist subagents, "
    "a shared filesystem and a full trace.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def main_options(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show tracebacks and debug logs.")] = False,
    log_json: Annotated[
        bool | None, typer.Option("--log-json/--log-console", help="Log format (default: by TTY).")
    ] = None,
) -> None:
    State.verbose = verbose
    configure_logging("debug" if verbose else "warning", json=log_json)


for command in (
    serve.server,
    admin.doctor,
    admin.schema,
    sessions.run,
    sessions.submit,
    sessions.status,
    sessions.cancel,
    sessions.answer,
    trace.tail,
    trace.trace,
    trace.sessions,
    serve.actor,
    serve.up,
):
    app.command()(command)
app.add_typer(memory_app, name="memory")
app.add_typer(dream_app, name="dream")
app.add_typer(fs_app, name="fs")
app.add_typer(webhooks_app, name="webhooks")


def main() -> None:
    """Console entry point."""
    try:
        app()
    except StaffworkError as exc:  # raised outside run_async (argument handling)
        err.print(f"error: {exc}", highlight=False)
        sys.exit(1)
