"""rediss://: the worker, the CLI and the producer talk to Redis over TLS, verifying its
certificate. A real redis-server with TLS only (no plain port), certificates made here."""

from __future__ import annotations

import datetime
import ipaddress
import json
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.e2e.helpers import (
    braze_attributes,
    braze_config,
    consent_event,
    free_port,
    jsonl,
    tail,
    wait_until,
)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(path: Path, key, cert) -> None:
    path.with_suffix(".key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.with_suffix(".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def make_certificates(directory: Path, names: list[str]) -> None:
    """ca.crt/ca.key for each name in ``names``; server.crt/key signed by the first CA."""
    now = datetime.datetime.now(datetime.UTC)
    for name in names:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        _write(directory / name, key, cert)
    ca_key = serialization.load_pem_private_key((directory / f"{names[0]}.key").read_bytes(), None)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(_name("redis"))
        .issuer_name(_name(names[0]))
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write(directory / "server", server_key, server)


@pytest.fixture
def tls_redis(redis_binary, tmp_path):
    make_certificates(tmp_path, ["ca", "other-ca"])
    port = free_port()
    log = tmp_path / "redis-tls.log"
    command = [
        redis_binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
        "--tls-cert-file", str(tmp_path / "server.crt"),
        "--tls-key-file", str(tmp_path / "server.key"),
        "--tls-ca-cert-file", str(tmp_path / "ca.crt"),
        "--tls-auth-clients", "no", "--save", "", "--appendonly", "no", "--dir", str(tmp_path),
    ]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    wait_until(
        lambda: b"Ready to accept" in log.read_bytes(), timeout=10, message=lambda: tail(log)
    )
    yield port, tmp_path
    proc.kill()
    proc.wait()


def test_worker_cli_and_producer_over_tls_with_the_certificate_verified(
    tls_redis, prefsync_env, fake_destinations, start_worker, run_cli
):
    port, certs = tls_redis
    env = {
        **prefsync_env,
        "PREFSYNC_REDIS_URL": f"rediss://127.0.0.1:{port}/0",
        "PREFSYNC_REDIS_TLS_CA_FILE": str(certs / "ca.crt"),
    }
    config = json.dumps(braze_config(fake_destinations.url))
    put = run_cli(env, "connectors", "put", "acme", "-", input=config)
    assert put.returncode == 0, put.stderr
    start_worker(env)
    event = consent_event("e1", "u-1", "2026-11-20T09:00:00Z", {"newsletter": True})
    enqueued = run_cli(env, "enqueue", "-", input=jsonl([event]))
    assert enqueued.returncode == 0, enqueued.stderr
    wait_until(lambda: braze_attributes(fake_destinations.calls("braze")), timeout=15)

    # A server whose certificate the CA bundle does not vouch for is refused.
    untrusted = {**env, "PREFSYNC_REDIS_TLS_CA_FILE": str(certs / "other-ca.crt")}
    refused = run_cli(untrusted, "connectors", "list", "acme")
    assert refused.returncode != 0
    assert "certificate verify failed" in refused.stderr
