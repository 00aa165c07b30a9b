"""How to reach a NATS deployment: its servers and this process's identity (credentials and TLS).

:class:`NatsOptions` holds the servers (``nats://`` or ``tls://`` URLs), at most one way to
authenticate (a ``.creds`` file, an NKEY seed file, a user and password, or a token) and the TLS
files (a CA, a client certificate and its key). A ``tls://`` URL or any TLS file means TLS.
:meth:`NatsOptions.from_env` reads them from the ``STAFFWORK_NATS_*`` variables (:data:`ENV`;
``staffwork``'s global options set them, so every command and every actor process it starts uses
them), starting from a ``nats`` CLI context when ``STAFFWORK_NATS_CONTEXT`` names one: explicit
values override the context's, and explicit credentials replace the context's as a whole.

Everything is checked when the options are made: a missing file, a user without a password, a
certificate without its key, two ways to authenticate at once, a context that is not there or not
JSON is a :class:`ConfigError` naming the value. :meth:`NatsOptions.connect_kwargs` gives nats-py's
``connect()`` keyword arguments; :meth:`NatsOptions.identity` names who connects without any secret.
"""

from __future__ import annotations

import base64
import binascii
import importlib.util
import json
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bus.errors import ConfigError

#: The environment variable of each option (``servers``: one URL or a comma-separated list).
ENV = {
    "servers": "STAFFWORK_NATS_URL",
    "creds": "STAFFWORK_NATS_CREDS",
    "nkey": "STAFFWORK_NATS_NKEY",
    "user": "STAFFWORK_NATS_USER",
    "password": "STAFFWORK_NATS_PASSWORD",
    "token": "STAFFWORK_NATS_TOKEN",
    "tls_ca": "STAFFWORK_NATS_TLS_CA",
    "tls_cert": "STAFFWORK_NATS_TLS_CERT",
    "tls_key": "STAFFWORK_NATS_TLS_KEY",
    "context": "STAFFWORK_NATS_CONTEXT",
    "inbox_prefix": "STAFFWORK_NATS_INBOX_PREFIX",
}

_AUTH = ("creds", "nkey", "user", "password", "token")
_FILES = {
    "creds": "creds file",
    "nkey": "nkey seed file",
    "tls_ca": "TLS CA file",
    "tls_cert": "TLS client certificate",
    "tls_key": "TLS client key",
}
#: A nats CLI context's keys and the option each one sets.
_CONTEXT_KEYS = {
    "url": "servers",
    "creds": "creds",
    "nkey": "nkey",
    "user": "user",
    "password": "password",
    "token": "token",
    "ca": "tls_ca",
    "cert": "tls_cert",
    "key": "tls_key",
}
#: Context keys that change how the connection behaves and that staffwork does not implement: a
#: context setting one is refused rather than half followed.
_CONTEXT_UNSUPPORTED = (
    "user_jwt",
    "nsc",
    "socks_proxy",
    "inbox_prefix",
    "jetstream_domain",
    "jetstream_api_prefix",
    "tls_first",
)
_SCHEMES = ("nats", "tls", "ws", "wss")


def split_servers(text: str) -> tuple[str, ...]:
    """``"a:4222, tls://b"`` → ``("nats://a:4222", "tls://b")``: a comma-separated list of URLs, each
    given ``nats://`` when it has no scheme; empty entries are ignored."""
    servers = []
    for part in text.split(","):
        url = part.strip()
        if url:
            servers.append(url if "://" in url else f"nats://{url}")
    return tuple(servers)


def redacted(url: str) -> str:
    """``url`` with the password (or the token) it carries replaced by ``***``."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    userinfo, _, host = parts.netloc.rpartition("@")
    user, has_password, _ = userinfo.partition(":")
    shown = f"{user}:***" if has_password else "***"
    return parts._replace(netloc=f"{shown}@{host}").geturl()


def context_path(context: str, environ: Mapping[str, str] | None = None) -> Path:
    """The file of a ``nats`` CLI context: a path as given (it has a ``/`` or ends in ``.json``), or
    ``$XDG_CONFIG_HOME/nats/context/<name>.json`` (``~/.config`` without the variable)."""
    environ = os.environ if environ is None else environ
    if "/" in context or os.sep in context or context.endswith(".json"):
        return Path(context).expanduser()
    config = environ.get("XDG_CONFIG_HOME") or str(Path(environ.get("HOME") or Path.home()) / ".config")
    return Path(config).expanduser() / "nats" / "context" / f"{context}.json"


@dataclass(frozen=True, kw_only=True)
class NatsOptions:
    """The servers and the identity to connect with; checked when made (see the module docstring)."""

    servers: tuple[str, ...] = ()
    creds: Path | None = None
    nkey: Path | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: The ``nats`` CLI context these options started from (its name or path), for messages.
    context: str | None = None
    #: Where replies come back (``_INBOX.<user>``): with least privilege (``staffwork auth``) each
    #: user may read only its own inbox prefix.
    inbox_prefix: str | None = None

    def __post_init__(self) -> None:
        # Accept what a caller naturally has: a comma-separated string of URLs, paths as strings.
        if isinstance(self.servers, str):
            object.__setattr__(self, "servers", split_servers(self.servers))
        for name in _FILES:
            if isinstance(value := getattr(self, name), str):
                object.__setattr__(self, name, Path(value).expanduser())
        self._check_servers()
        for name, what in _FILES.items():
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                state = "is not a file" if Path(path).exists() else "does not exist"
                raise ConfigError(f"NATS {what} {str(path)!r} {state}")
        methods = self._methods()
        if len(methods) > 1:
            raise ConfigError(
                f"two ways to authenticate to NATS at once: {' and '.join(methods)} (give only one)"
            )
        if self.user and not self.password:
            raise ConfigError(
                f"NATS user {self.user!r} has no password (give --password or {ENV['password']})"
            )
        if self.password and not self.user:
            raise ConfigError(f"a NATS password without a user (give --user or {ENV['user']})")
        if bool(self.tls_cert) != bool(self.tls_key):
            given, missing = ("tls_cert", "tls_key") if self.tls_cert else ("tls_key", "tls_cert")
            raise ConfigError(
                f"NATS {_FILES[given]} {str(getattr(self, given))!r} has no {_FILES[missing]} "
                f"(give --{missing.replace('_', '-')} or {ENV[missing]})"
            )
        if self.creds and b"BEGIN NATS USER JWT" not in self.creds.read_bytes():
            raise ConfigError(
                f"NATS creds file {str(self.creds)!r} is not a credentials file "
                "(it has no 'BEGIN NATS USER JWT' block)"
            )
        if self.nkey and not self.nkey.read_bytes().strip().startswith(b"SU"):
            raise ConfigError(
                f"NATS nkey seed file {str(self.nkey)!r} does not hold a user seed "
                "(one line starting with 'SU')"
            )

    def _check_servers(self) -> None:
        for url in self.servers:
            try:
                parts = urlsplit(url)
                parts.port  # noqa: B018 (raises ValueError for a port that is not a number)
            except ValueError as exc:
                raise ConfigError(f"NATS URL {redacted(url)!r} is not valid: {exc}") from None
            if parts.scheme not in _SCHEMES:
                raise ConfigError(
                    f"NATS URL {redacted(url)!r} has scheme {parts.scheme!r} (use nats:// or tls://)"
                )
            if not parts.hostname:
                raise ConfigError(f"NATS URL {redacted(url)!r} has no host")
        websocket = {urlsplit(url).scheme in ("ws", "wss") for url in self.servers}
        if len(websocket) > 1:
            raise ConfigError(
                f"NATS URLs {', '.join(map(redacted, self.servers))} mix websocket and plain URLs"
            )

    def _methods(self) -> list[str]:
        methods = []
        if self.creds:
            methods.append(f"creds file {str(self.creds)!r}")
        if self.nkey:
            methods.append(f"nkey seed file {str(self.nkey)!r}")
        if self.user or self.password:
            methods.append(f"user {self.user!r}" if self.user else "a password")
        if self.token:
            methods.append("a token")
        return methods

    # --- making them ------------------------------------------------------------------------------

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> NatsOptions:
        """The options the ``STAFFWORK_NATS_*`` variables give (:data:`ENV`; an empty one is unset),
        on top of the ``nats`` CLI context ``STAFFWORK_NATS_CONTEXT`` names, if any."""
        environ = os.environ if environ is None else environ
        given = {name: value for name, var in ENV.items() if (value := environ.get(var, "").strip())}
        context = given.pop("context", None)
        explicit = _typed(given)
        if context is None:
            return cls(**explicit)
        values = _typed(_read_context(context, environ))
        if any(name in explicit for name in _AUTH):  # explicit credentials replace the context's
            values = {name: value for name, value in values.items() if name not in _AUTH}
        return cls(**{**values, **explicit}, context=context)

    def with_servers(self, servers: str | tuple[str, ...]) -> NatsOptions:
        """These options for other servers (a comma-separated string, or URLs)."""
        return replace(self, servers=split_servers(servers) if isinstance(servers, str) else servers)

    # --- using them -------------------------------------------------------------------------------

    @property
    def tls(self) -> bool:
        """Whether the connection must be TLS: a ``tls://`` (or ``wss://``) URL, or any TLS file."""
        schemes = {urlsplit(url).scheme for url in self.servers}
        return bool(self.tls_ca or self.tls_cert or schemes & {"tls", "wss"})

    @property
    def shown_servers(self) -> str:
        """The servers as one string for messages (passwords in URLs replaced by ``***``)."""
        return ",".join(redacted(url) for url in self.servers)

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context (the CA, else the system's; the client certificate), None without TLS."""
        if not self.tls:
            return None
        try:
            context = ssl.create_default_context(cafile=str(self.tls_ca) if self.tls_ca else None)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                f"NATS TLS CA file {str(self.tls_ca)!r} cannot be used: {_ssl_reason(exc)}"
            ) from None
        if self.tls_cert and self.tls_key:
            try:
                context.load_cert_chain(self.tls_cert, self.tls_key)
            except (ssl.SSLError, OSError) as exc:
                raise ConfigError(
                    f"NATS TLS client certificate {str(self.tls_cert)!r} with key {str(self.tls_key)!r} "
                    f"cannot be used: {_ssl_reason(exc)}"
                ) from None
        return context

    def connect_kwargs(self) -> dict[str, Any]:
        """nats-py's ``connect()`` keyword arguments for these servers and this identity."""
        kwargs: dict[str, Any] = {"servers": list(self.servers)}
        if (self.creds or self.nkey) and importlib.util.find_spec("nkeys") is None:
            raise ConfigError(f"NATS {self._methods()[0]} needs the 'nkeys' package (pip install nkeys)")
        if self.creds:
            kwargs["user_credentials"] = str(self.creds)
        elif self.nkey:
            kwargs["nkeys_seed"] = str(self.nkey)
        elif self.user:
            kwargs["user"] = self.user
            kwargs["password"] = self.password
        elif self.token:
            kwargs["token"] = self.token
        if (context := self.ssl_context()) is not None:
            kwargs["tls"] = context
        if self.inbox_prefix:
            kwargs["inbox_prefix"] = self.inbox_prefix
        return kwargs

    def identity(self) -> str:
        """Who connects, for messages, never with a secret: ``user 'alice'``, ``nkey UD3F…``,
        ``creds file '…' (user 'bot')``, ``a token``, ``no credentials``."""
        if self.creds:
            name = _jwt_name(self.creds)
            return f"creds file {str(self.creds)!r}" + (f" (user {name!r})" if name else "")
        if self.nkey:
            public = _nkey_public(self.nkey)
            return f"nkey {public}" if public else f"nkey seed file {str(self.nkey)!r}"
        if self.user:
            return f"user {self.user!r}"
        if self.token:
            return "a token"
        for url in self.servers:
            parts = urlsplit(url)
            if parts.username and parts.password is not None:
                return f"user {parts.username!r} (from the URL)"
            if parts.username:
                return "a token (from the URL)"
        return "no credentials"

    def describe(self) -> str:
        """:meth:`identity` and the TLS in use: ``user 'al' over TLS (CA '…', client certificate '…')``."""
        if not self.tls:
            return self.identity()
        details = [f"CA {str(self.tls_ca)!r}" if self.tls_ca else "the system's CAs"]
        if self.tls_cert:
            details.append(f"client certificate {str(self.tls_cert)!r}")
        return f"{self.identity()} over TLS ({', '.join(details)})"


def _typed(values: Mapping[str, str]) -> dict[str, Any]:
    """Option values as strings (from the environment or a context) → the dataclass's types."""
    typed: dict[str, Any] = {}
    for name, value in values.items():
        if name == "servers":
            typed[name] = split_servers(value)
        elif name in _FILES:
            typed[name] = Path(value).expanduser()
        else:
            typed[name] = value
    return typed


def _read_context(context: str, environ: Mapping[str, str]) -> dict[str, str]:
    """The option values a ``nats`` CLI context file sets (its empty keys are unset)."""
    path = context_path(context, environ)
    label = f"NATS context {context!r}" + ("" if str(path) == context else f" ({path})")
    if not path.is_file():
        folder = path.parent
        known = sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []
        listed = f"known: {', '.join(known)}" if known else f"no contexts in {folder}"
        raise ConfigError(f"NATS context {context!r} not found: {path} does not exist ({listed})")
    try:
        document = json.loads(path.read_bytes())
    except (ValueError, OSError) as exc:
        raise ConfigError(f"{label} is not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise ConfigError(f"{label} is not a JSON object: it holds a {type(document).__name__}")
    for key in _CONTEXT_UNSUPPORTED:
        if document.get(key):
            raise ConfigError(f"{label} sets {key!r} = {document[key]!r}, which staffwork does not support")
    values: dict[str, str] = {}
    for key, name in _CONTEXT_KEYS.items():
        value = document.get(key)
        if value in (None, ""):
            continue
        if not isinstance(value, str):
            raise ConfigError(f"{label}: {key!r} must be a string, got {value!r}")
        values[name] = value
    return values


def _ssl_reason(exc: BaseException) -> str:
    return str(getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc)


def _jwt_name(creds: Path) -> str:
    """The user name in a creds file's JWT (its ``name`` claim), or "" if it cannot be read."""
    try:
        lines = creds.read_text().splitlines()
        token = next(lines[i + 1].strip() for i, line in enumerate(lines) if "BEGIN NATS USER JWT" in line)
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return str(claims.get("name") or claims.get("sub") or "")
    except (OSError, StopIteration, IndexError, ValueError, binascii.Error, AttributeError):
        return ""


def _nkey_public(seed_file: Path) -> str:
    """The public key (``U…``) of an nkey seed file, or "" without the nkeys package or a valid seed."""
    try:
        import nkeys  # type: ignore[import-untyped]  # nats-py's optional dependency, no type hints

        pair = nkeys.from_seed(bytearray(seed_file.read_bytes().strip()))
        return str(pair.public_key.decode())
    except Exception:  # a bad seed is reported by the connection itself
        return ""
