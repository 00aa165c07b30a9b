"""Connection options against real, secured nats-servers (each started with a config file written
here): user and password, token, NKEY, mutual TLS (a CA, server and client certificates made here),
a ``nats`` CLI context, a server list whose first server is dead. Each works with the right options,
given directly or through the ``STAFFWORK_NATS_*`` environment, and fails with one line naming the
identity (never a secret) with the wrong ones. ``staffwork doctor`` reports what a restricted user
may not do, and the global options reach the command through the environment."""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import nkeys  # type: ignore[import-untyped]
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from bus.connection import Bus
from bus.errors import BusUnavailable, ConfigError
from bus.options import ENV, NatsOptions, redacted, split_servers
from schemas.session import SessionCancel
from tests.helpers import NatsServer, free_port, staffwork, start_nats_server, stop_nats_server

PASSWORD = "s3cret-pw"
TOKEN = "t0ken-value"


@contextmanager
def nats_server(tmp_path: Path, config: str, name: str = "nats") -> Iterator[NatsServer]:
    """A nats-server with JetStream reading ``config`` (written to ``<tmp>/<name>.conf``)."""
    conf = tmp_path / f"{name}.conf"
    conf.write_text(config)
    store = tmp_path / f"{name}-store"
    store.mkdir()
    server = start_nats_server(store, config=conf)
    try:
        yield server
    finally:
        stop_nats_server(server)


async def connects(options: NatsOptions | None = None, url: str | None = None) -> str:
    """Connect, prove JetStream answers through the connection, close; the identity used."""
    bus = await Bus.connect(url, root="opts", name="test-options", timeout=5, options=options)
    try:
        await bus.account_info()
        return bus.options.describe()
    finally:
        await bus.close()


async def refused(options: NatsOptions | None = None, url: str | None = None) -> str:
    with pytest.raises(BusUnavailable) as caught:
        await connects(options, url)
    message = str(caught.value)
    assert "\n" not in message
    assert PASSWORD not in message
    assert TOKEN not in message
    return message


def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ENV.values():
        monkeypatch.delenv(var, raising=False)


# --- options alone: parsing and one-line errors ---------------------------------------------------


def test_servers_are_a_comma_separated_list_and_urls_are_shown_without_passwords() -> None:
    assert split_servers(" a:4222, tls://b:4443 ,,") == ("nats://a:4222", "tls://b:4443")
    assert redacted("nats://u:pw@h:4222") == "nats://u:***@h:4222"
    assert redacted("nats://tok@h:4222") == "nats://***@h:4222"
    options = NatsOptions(servers=("nats://bob:pw@h:4222",))
    assert options.shown_servers == "nats://bob:***@h:4222"
    assert options.identity() == "user 'bob' (from the URL)"
    assert NatsOptions(servers=("tls://h:4443",)).tls
    assert not NatsOptions(servers=("nats://h:4222",)).tls


def test_bad_options_are_one_line_naming_the_value(tmp_path: Path) -> None:
    cert = tmp_path / "client.pem"
    cert.write_text("x")
    seed = tmp_path / "user.nk"
    seed.write_text("SUAAAA\n")
    cases: list[tuple[dict[str, object], str]] = [
        ({"creds": tmp_path / "gone.creds"}, f"NATS creds file '{tmp_path}/gone.creds' does not exist"),
        ({"nkey": tmp_path}, f"NATS nkey seed file '{tmp_path}' is not a file"),
        ({"user": "alice"}, "NATS user 'alice' has no password (give --password or STAFFWORK_NATS_PASSWORD)"),
        ({"password": PASSWORD}, "a NATS password without a user (give --user or STAFFWORK_NATS_USER)"),
        (
            {"tls_cert": cert},
            f"NATS TLS client certificate '{cert}' has no TLS client key "
            "(give --tls-key or STAFFWORK_NATS_TLS_KEY)",
        ),
        (
            {"user": "alice", "password": PASSWORD, "token": TOKEN},
            "two ways to authenticate to NATS at once: user 'alice' and a token (give only one)",
        ),
        (
            {"nkey": seed, "token": TOKEN},
            f"two ways to authenticate to NATS at once: nkey seed file '{seed}' and a token (give only one)",
        ),
        (
            {"creds": cert},
            f"NATS creds file '{cert}' is not a credentials file (it has no 'BEGIN NATS USER JWT' block)",
        ),
        (
            {"servers": ("http://u:pw@h",)},
            "NATS URL 'http://u:***@h' has scheme 'http' (use nats:// or tls://)",
        ),
        ({"servers": ("nats://h:port",)}, "NATS URL 'nats://h:port' is not valid: Port could not be cast"),
    ]
    for fields, message in cases:
        with pytest.raises(ConfigError) as caught:
            NatsOptions(**fields)  # type: ignore[arg-type]
        assert str(caught.value).startswith(message), (fields, str(caught.value))


def test_a_context_is_read_only_when_named_and_explicit_values_win(tmp_path: Path) -> None:
    contexts = tmp_path / "config" / "nats" / "context"
    contexts.mkdir(parents=True)
    (contexts / "prod.json").write_text(
        json.dumps(
            {"description": "", "url": "nats://a:4222,nats://b:4222", "user": "ctx", "password": PASSWORD}
        )
    )
    (tmp_path / "config" / "nats" / "context.txt").write_text("prod")  # selected, but never implied
    env = {"XDG_CONFIG_HOME": str(tmp_path / "config")}
    assert NatsOptions.from_env(env) == NatsOptions()

    named = NatsOptions.from_env({**env, ENV["context"]: "prod"})
    assert named.servers == ("nats://a:4222", "nats://b:4222")
    assert (named.user, named.password, named.context) == ("ctx", PASSWORD, "prod")
    # Explicit values win; explicit credentials replace the context's as a whole.
    over = NatsOptions.from_env(
        {**env, ENV["context"]: "prod", ENV["servers"]: "c:4222", ENV["token"]: TOKEN}
    )
    assert over.servers == ("nats://c:4222",)
    assert (over.user, over.password, over.token) == (None, None, TOKEN)
    # By path, too.
    assert NatsOptions.from_env({ENV["context"]: str(contexts / "prod.json")}).user == "ctx"

    with pytest.raises(ConfigError) as missing:
        NatsOptions.from_env({**env, ENV["context"]: "staging"})
    assert str(missing.value) == (
        f"NATS context 'staging' not found: {contexts}/staging.json does not exist (known: prod)"
    )
    (contexts / "broken.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"^NATS context 'broken' \(.*broken\.json\) is not JSON: "):
        NatsOptions.from_env({**env, ENV["context"]: "broken"})
    (contexts / "edge.json").write_text(json.dumps({"url": "nats://e", "jetstream_domain": "edge"}))
    with pytest.raises(
        ConfigError, match=r"sets 'jetstream_domain' = 'edge', which staffwork does not support$"
    ):
        NatsOptions.from_env({**env, ENV["context"]: "edge"})


# --- user and password, token, nkey ----------------------------------------------------------------


async def test_user_and_password(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clean_env(monkeypatch)
    config = f'authorization {{ users = [ {{ user: alice, password: "{PASSWORD}" }} ] }}\n'
    with nats_server(tmp_path, config) as server:
        good = NatsOptions(servers=(server.url,), user="alice", password=PASSWORD)
        assert await connects(good) == "user 'alice'"
        assert await refused(NatsOptions(servers=(server.url,), user="alice", password="wrong")) == (
            f"cannot reach NATS at {server.url}: authorization violation (user 'alice')"
        )
        assert await refused(NatsOptions(), server.url) == (
            f"cannot reach NATS at {server.url}: authorization violation (no credentials)"
        )
        # From the environment (what every process, up's actors included, does).
        monkeypatch.setenv(ENV["user"], "alice")
        monkeypatch.setenv(ENV["password"], PASSWORD)
        assert await connects(url=server.url) == "user 'alice'"
        monkeypatch.setenv(ENV["password"], "wrong")
        assert "authorization violation (user 'alice')" in await refused(url=server.url)


async def test_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clean_env(monkeypatch)
    with nats_server(tmp_path, f'authorization {{ token: "{TOKEN}" }}\n') as server:
        assert await connects(NatsOptions(servers=(server.url,), token=TOKEN)) == "a token"
        assert await refused(NatsOptions(servers=(server.url,), token="not-it")) == (
            f"cannot reach NATS at {server.url}: authorization violation (a token)"
        )
        monkeypatch.setenv(ENV["token"], TOKEN)
        assert await connects(url=server.url) == "a token"


async def test_nkey(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clean_env(monkeypatch)

    def seed_file(name: str) -> tuple[Path, str]:
        seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
        path = tmp_path / name
        path.write_bytes(seed + b"\n")
        return path, nkeys.from_seed(bytearray(seed)).public_key.decode()

    allowed, public = seed_file("allowed.nk")
    other, other_public = seed_file("other.nk")
    with nats_server(tmp_path, f'authorization {{ users = [ {{ nkey: "{public}" }} ] }}\n') as server:
        assert await connects(NatsOptions(servers=(server.url,), nkey=allowed)) == f"nkey {public}"
        assert await refused(NatsOptions(servers=(server.url,), nkey=other)) == (
            f"cannot reach NATS at {server.url}: authorization violation (nkey {other_public})"
        )
        monkeypatch.setenv(ENV["nkey"], str(allowed))
        assert await connects(url=server.url) == f"nkey {public}"


# --- mutual TLS -----------------------------------------------------------------------------------


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_pki(folder: Path) -> Pki:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, with small EC keys."""
    now = datetime.datetime.now(datetime.UTC)

    def issue(
        name: str,
        key: ec.EllipticCurvePrivateKey,
        issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    ) -> x509.Certificate:
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer[0] if issuer else subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        )
        if issuer is None:
            builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            builder = builder.add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
        else:
            builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            builder = builder.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer[1].public_key()), critical=False
            )
            if name == "server":
                builder = builder.add_extension(
                    x509.SubjectAlternativeName(
                        [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
                    ),
                    critical=False,
                )
            usage = ExtendedKeyUsageOID.SERVER_AUTH if name == "server" else ExtendedKeyUsageOID.CLIENT_AUTH
            builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        return builder.sign(issuer[1] if issuer else key, hashes.SHA256())

    def write(name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> tuple[Path, Path]:
        cert_path, key_path = folder / f"{name}.pem", folder / f"{name}-key.pem"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        return cert_path, key_path

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = issue("staffwork test CA", ca_key, None)
    ca_path, _ = write("ca", ca, ca_key)
    issuer = (ca.subject, ca_key)
    server_key, client_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    server = write("server", issue("server", server_key, issuer), server_key)
    client = write("client", issue("client", client_key, issuer), client_key)
    return Pki(ca_path, *server, *client)


async def test_mutual_tls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clean_env(monkeypatch)
    pki = make_pki(tmp_path)
    config = (
        f'tls {{ cert_file: "{pki.server_cert}", key_file: "{pki.server_key}", '
        f'ca_file: "{pki.ca}", verify: true, timeout: 2 }}\n'
    )
    with nats_server(tmp_path, config) as server:
        url = f"tls://127.0.0.1:{server.port}"
        good = NatsOptions(servers=(url,), tls_ca=pki.ca, tls_cert=pki.client_cert, tls_key=pki.client_key)
        assert await connects(good) == (
            f"no credentials over TLS (CA '{pki.ca}', client certificate '{pki.client_cert}')"
        )
        # Without the client certificate the server refuses the handshake.
        no_cert = await refused(NatsOptions(servers=(url,), tls_ca=pki.ca))
        assert no_cert.startswith(f"cannot reach NATS at {url}: TLS handshake failed: "), no_cert
        assert no_cert.endswith(
            f"(no credentials over TLS (CA '{pki.ca}')): "
            "does it want a client certificate (--tls-cert, --tls-key)?"
        )
        # Without our CA, the server's certificate is not trusted (the system's CAs do not know it).
        assert await refused(
            NatsOptions(servers=(url,), tls_cert=pki.client_cert, tls_key=pki.client_key)
        ) == (
            f"cannot reach NATS at {url}: TLS: the server's certificate is not trusted "
            "(unable to get local issuer certificate; no credentials over TLS "
            f"(the system's CAs, client certificate '{pki.client_cert}'))"
        )
        # From the environment, with a nats:// URL: any TLS option means TLS.
        monkeypatch.setenv(ENV["tls_ca"], str(pki.ca))
        monkeypatch.setenv(ENV["tls_cert"], str(pki.client_cert))
        monkeypatch.setenv(ENV["tls_key"], str(pki.client_key))
        assert "over TLS" in await connects(url=server.url)

    # TLS asked for from a server without TLS: refused rather than talking in plain text.
    with nats_server(tmp_path, "# no TLS\n", name="plain") as plain:
        message = await refused(url=plain.url)
        assert message.endswith("but the server does not require TLS"), message

    with pytest.raises(ConfigError, match=r"^NATS TLS client certificate .* cannot be used: "):
        await connects(NatsOptions(tls_cert=pki.ca, tls_key=pki.client_key), plain.url)


# --- a nats context, a list of servers ------------------------------------------------------------


async def test_a_nats_context_gives_the_url_and_the_identity(tmp_path: Path) -> None:
    config = f'authorization {{ users = [ {{ user: alice, password: "{PASSWORD}" }} ] }}\n'
    with nats_server(tmp_path, config) as server:
        contexts = tmp_path / "config" / "nats" / "context"
        contexts.mkdir(parents=True)
        context = {"url": server.url, "user": "alice", "password": PASSWORD, "token": "", "creds": ""}
        (contexts / "lab.json").write_text(json.dumps(context))
        env = {"XDG_CONFIG_HOME": str(tmp_path / "config"), ENV["context"]: "lab"}
        assert await connects(NatsOptions.from_env(env)) == "user 'alice'"  # no URL given: the context's
        wrong = NatsOptions.from_env({**env, ENV["user"]: "alice", ENV["password"]: "wrong"})
        assert "authorization violation (user 'alice')" in await refused(wrong)


async def test_a_dead_first_server_is_skipped(
    nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    clean_env(monkeypatch)
    dead = f"nats://127.0.0.1:{free_port()}"
    for _ in range(3):  # nats-py shuffles the list: each order comes up
        assert await connects(url=f"{dead},{nats_server.url}") == "no credentials"


# --- permission errors, doctor, the global options --------------------------------------------------

RESTRICTED = f"""
authorization {{
  users = [
    {{ user: admin, password: "{PASSWORD}" }}
    {{ user: client, password: "{PASSWORD}",
       permissions: {{ publish: ["rt.api.>"], subscribe: ["_INBOX.>"] }} }}
  ]
}}
"""


async def test_a_refused_subscription_is_recorded_on_the_bus(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clean_env(monkeypatch)
    with nats_server(tmp_path, RESTRICTED) as server:
        options = NatsOptions(servers=(server.url,), user="client", password=PASSWORD)
        bus = await Bus.connect(root="rt", options=options, timeout=5)
        try:
            mark = bus.permission_errors.count
            allowed = await bus.listen("_INBOX.mine", SessionCancel, lambda _: None)
            await bus.settle()
            assert bus.permission_errors.since(mark) == []
            denied = await bus.listen("rt.s.*.ctl", SessionCancel, lambda _: None)
            await bus.settle()
            assert bus.permission_errors.since(mark) == [
                'permissions violation for subscription to "rt.s.*.ctl"'
            ]
            for listener in (allowed, denied):
                await listener.close()
        finally:
            await bus.close()


def test_doctor_reports_what_a_restricted_identity_may_not_do(tmp_path: Path) -> None:
    with nats_server(tmp_path, RESTRICTED) as server:
        client = {ENV["user"]: "client", ENV["password"]: PASSWORD}
        result = staffwork("doctor", "--nats", server.url, "--root", "rt", home=tmp_path, env=client)
        assert result.returncode == 1, result.stdout + result.stderr
        lines = result.stdout.splitlines()

        def line(*words: str) -> str:
            found = [text for text in lines if all(word in text for word in words)]
            assert len(found) == 1, (words, result.stdout)
            return " ".join(found[0].split())

        assert line("NATS connection").startswith(
            f"ok NATS connection {server.url} as user 'client' (server "
        )
        assert line("FAIL", "JetStream") == (
            'FAIL JetStream refused: permissions violation for publish to "$js.api.info"'
        )
        assert line("subscribe to _INBOX.>").startswith("ok subscribe to _INBOX.> allowed")
        assert line("subscribe to rt.s.*.ctl").startswith(
            'refused subscribe to rt.s.*.ctl permissions violation for subscription to "rt.s.*.ctl"'
        )
        assert line("refused", "read stream rt_log").startswith(
            'refused read stream rt_log permissions violation for publish to "$js.api.stream.info.rt_log"'
        )
        assert line("read KV rt_sessions").startswith("refused read KV rt_sessions")
        assert line("read consumer lead").startswith("refused read consumer lead")
        assert line("request $SRV.INFO.*").startswith("refused request $SRV.INFO.*")
        assert "nats_error" not in result.stderr  # refusals doctor looks for are not logged as warnings
        assert PASSWORD not in result.stdout + result.stderr

        # The same server as the unrestricted user, with the global options before the command.
        admin = staffwork(
            "--user",
            "admin",
            "--password",
            PASSWORD,
            "doctor",
            "--nats",
            server.url,
            "--root",
            "rt",
            home=tmp_path,
        )
        assert admin.returncode == 0, admin.stdout + admin.stderr
        assert f"{server.url} as user 'admin'" in admin.stdout
        assert "refused" not in admin.stdout
        assert "n/a read KV rt_sessions the bucket does not exist yet (not provisioned)" in " ".join(
            admin.stdout.split()
        )  # nothing provisioned yet: nothing to read

        # A context named with --context gives the URL too: no --nats needed.
        context = tmp_path / "admin.json"
        context.write_text(json.dumps({"url": server.url, "user": "admin", "password": PASSWORD}))
        by_context = staffwork("--context", str(context), "doctor", "--root", "rt", home=tmp_path)
        assert by_context.returncode == 0, by_context.stdout + by_context.stderr
        assert f"{server.url} as user 'admin'" in by_context.stdout


def test_bad_global_options_are_one_line_before_any_command_runs(tmp_path: Path) -> None:
    result = staffwork("--user", "alice", "schema", home=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "error: NATS user 'alice' has no password (give --password or STAFFWORK_NATS_PASSWORD)"
    )
    missing = staffwork("--context", "nope", "schema", home=tmp_path, env={"XDG_CONFIG_HOME": str(tmp_path)})
    assert missing.returncode == 1
    assert missing.stderr.strip() == (
        f"error: NATS context 'nope' not found: {tmp_path}/nats/context/nope.json does not exist "
        f"(no contexts in {tmp_path}/nats/context)"
    )
