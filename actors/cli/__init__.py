"""The ``staffwork`` command line: the app, its global options, and every command in the order
``--help`` lists them (each module holds its commands; none imports this one).

Every error is one line on stderr naming the offending value, and a non-zero exit code;
``--verbose`` adds the traceback. The connection options (``--creds``, ``--user``, ``--tls-ca``,
``--context``, ...) are the app's, so they go before the command (``staffwork --creds me.creds up``);
they are put into the environment (``STAFFWORK_NATS_*``), where every command and every actor
process ``up`` starts reads them (``bus.options.NatsOptions.from_env``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from actors.cli import admin, auth, ps, serve, sessions, trace
from actors.cli.common import State, err
from actors.cli.dream import dream_app
from actors.cli.fs import fs_app
from actors.cli.memory import memory_app
from actors.cli.webhooks import webhooks_app
from bus.errors import StaffworkError
from bus.logs import configure_logging
from bus.options import ENV, NatsOptions

app = typer.Typer(
    name="staffwork",
    help="Multiagent orchestration with Claude on NATS: a lead agent, parallel specialist subagents, "
    "a shared filesystem and a full trace.\n\n"
    "Connection options (credentials, TLS, a nats context) go before the command: "
    "staffwork --creds me.creds up; the server's URL is each command's --nats.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


CONNECTION = "Connection (before the command)"


def _connection(flag: str, option: str, help: str) -> Any:  # typer.Option is typed Any
    return typer.Option(flag, envvar=ENV[option], help=help, rich_help_panel=CONNECTION)


@app.callback()
def main_options(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show tracebacks and debug logs.")] = False,
    log_json: Annotated[
        bool | None, typer.Option("--log-json/--log-console", help="Log format (default: by TTY).")
    ] = None,
    creds: Annotated[Path | None, _connection("--creds", "creds", "NATS credentials file (.creds).")] = None,
    nkey: Annotated[Path | None, _connection("--nkey", "nkey", "NKEY seed file.")] = None,
    user: Annotated[str | None, _connection("--user", "user", "NATS user (with --password).")] = None,
    password: Annotated[
        str | None,
        _connection("--password", "password", f"NATS password (better: {ENV['password']}, not in ps)."),
    ] = None,
    token: Annotated[
        str | None, _connection("--token", "token", f"NATS token (better: {ENV['token']}, not in ps).")
    ] = None,
    tls_ca: Annotated[
        Path | None, _connection("--tls-ca", "tls_ca", "CA file to verify the servers (implies TLS).")
    ] = None,
    tls_cert: Annotated[
        Path | None,
        _connection("--tls-cert", "tls_cert", "Client certificate for mutual TLS (with --tls-key)."),
    ] = None,
    tls_key: Annotated[
        Path | None, _connection("--tls-key", "tls_key", "The client certificate's key.")
    ] = None,
    context: Annotated[
        str | None,
        _connection(
            "--context",
            "context",
            "A nats CLI context (name or file) to start from: its URL, credentials and TLS; "
            "explicit options win. The selected one is used only when named here.",
        ),
    ] = None,
) -> None:
    State.verbose = verbose
    configure_logging("debug" if verbose else "warning", json=log_json)
    given = {
        "creds": creds,
        "nkey": nkey,
        "user": user,
        "password": password,
        "token": token,
        "tls_ca": tls_ca,
        "tls_cert": tls_cert,
        "tls_key": tls_key,
        "context": context,
    }
    # Into the environment: every command reads them there (Bus.connect), and so does every process
    # a command starts (up's actors). A path is made absolute, so a child in another directory agrees.
    for option, value in given.items():
        if value is not None:
            os.environ[ENV[option]] = str(value.expanduser().absolute()) if isinstance(value, Path) else value
    options = NatsOptions.from_env(os.environ)  # a bad file or a missing password: one line, now
    if options.servers and not os.environ.get(ENV["servers"]):
        os.environ[ENV["servers"]] = ",".join(options.servers)  # the context's URL: every --nats default


for command in (
    serve.server,
    admin.doctor,
    admin.schema,
    sessions.run,
    sessions.submit,
    sessions.send,
    sessions.status,
    sessions.cancel,
    sessions.interrupt,
    sessions.answer,
    sessions.approve,
    sessions.deny,
    trace.tail,
    trace.trace,
    trace.sessions,
    serve.actor,
    serve.up,
    ps.ps,
    ps.health,
    auth.auth,
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
