"""Kafka connection security: settings -> KafkaSecurity -> the exact aiokafka / Faust keywords.

No broker is involved: these tests pin what every client is *configured* with. That the
default (PLAINTEXT) adds nothing is the backwards-compatibility guarantee; that the password
never shows in a repr, a log line or a validation error is the secrecy guarantee.
"""

from __future__ import annotations

import io
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import faust
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
from loguru import logger
from pydantic import SecretStr, ValidationError

from ess.kafka.clients import (
    PLAINTEXT,
    KafkaSecurity,
    KafkaSecurityError,
    admin_client,
    consumer,
    producer,
)
from ess.roles.detect.epoch import StaticEpoch
from ess.roles.detect.settings import DetectorSettings
from ess.settings import EssSettings
from schemas import topic_registry
from streams.app import create_app

PASSWORD = "s3cr3t-Pa55word-do-not-print"  # a test value that must never leak

_SECURITY_ENV = (
    "KAFKA_SECURITY_PROTOCOL",
    "KAFKA_SASL_MECHANISM",
    "KAFKA_SASL_USERNAME",
    "KAFKA_SASL_PASSWORD",
    "KAFKA_SSL_CAFILE",
    "KAFKA_SSL_CERTFILE",
    "KAFKA_SSL_KEYFILE",
)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever the developer's shell exports must not leak into these tests."""
    for name in (*_SECURITY_ENV, "KAFKA_BOOTSTRAP_SERVERS"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(f"ESS_{name}", raising=False)


@dataclass(frozen=True)
class Pki:
    cafile: Path
    certfile: Path
    keyfile: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A throwaway CA and a client certificate signed by it, as PEM files."""
    directory = tmp_path_factory.mktemp("pki")
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("ess-test-ca"))
        .issuer_name(_name("ess-test-ca"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    client_key = ec.generate_private_key(ec.SECP256R1())
    client_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("ess-client"))
        .issuer_name(ca_cert.subject)
        .public_key(client_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=1))
        .sign(ca_key, hashes.SHA256())
    )
    pki = Pki(directory / "ca.pem", directory / "client.pem", directory / "client.key")
    pki.cafile.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    pki.certfile.write_bytes(client_cert.public_bytes(serialization.Encoding.PEM))
    pki.keyfile.write_bytes(
        client_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return pki


def sasl_ssl(pki: Pki, mechanism: Any = "SCRAM-SHA-512") -> KafkaSecurity:
    return KafkaSecurity(
        protocol="SASL_SSL",
        sasl_mechanism=mechanism,
        sasl_username="ess-svc",
        sasl_password=SecretStr(PASSWORD),
        ssl_cafile=pki.cafile,
    )


def _without_context(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in kwargs.items() if key != "ssl_context"}


def _assert_verifying(context: Any) -> None:
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode is ssl.CERT_REQUIRED
    assert context.check_hostname is True


# --------------------------------------------------------------------------- aiokafka kwargs


def test_plaintext_adds_no_keyword_at_all() -> None:
    assert KafkaSecurity() == PLAINTEXT
    assert PLAINTEXT.aiokafka_kwargs() == {}
    assert PLAINTEXT.faust_credentials() is None
    assert PLAINTEXT.ssl_context() is None
    assert PLAINTEXT.mechanism is None


def test_sasl_plaintext_defaults_to_the_plain_mechanism() -> None:
    security = KafkaSecurity(
        protocol="SASL_PLAINTEXT", sasl_username="ess-svc", sasl_password=SecretStr(PASSWORD)
    )
    assert security.aiokafka_kwargs() == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "PLAIN",
        "sasl_plain_username": "ess-svc",
        "sasl_plain_password": PASSWORD,
    }


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_ssl_gives_mechanism_credentials_and_a_verifying_context(
    pki: Pki, mechanism: str
) -> None:
    kwargs = sasl_ssl(pki, mechanism).aiokafka_kwargs()
    assert _without_context(kwargs) == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": mechanism,
        "sasl_plain_username": "ess-svc",
        "sasl_plain_password": PASSWORD,
    }
    _assert_verifying(kwargs["ssl_context"])


def test_ssl_with_client_certificate(pki: Pki) -> None:
    security = KafkaSecurity(
        protocol="SSL", ssl_cafile=pki.cafile, ssl_certfile=pki.certfile, ssl_keyfile=pki.keyfile
    )
    kwargs = security.aiokafka_kwargs()
    assert set(kwargs) == {"security_protocol", "ssl_context"}
    assert kwargs["security_protocol"] == "SSL"
    _assert_verifying(kwargs["ssl_context"])
    # Loaded from the CA file (not only the system store).
    assert len(kwargs["ssl_context"].get_ca_certs()) >= 1


def test_ssl_without_files_uses_the_system_store() -> None:
    kwargs = KafkaSecurity(protocol="SSL").aiokafka_kwargs()
    assert kwargs["security_protocol"] == "SSL"
    _assert_verifying(kwargs["ssl_context"])


def test_every_call_builds_a_fresh_context(pki: Pki) -> None:
    security = sasl_ssl(pki)
    assert security.ssl_context() is not security.ssl_context()


# --------------------------------------------------------------------------- constructors


async def test_constructors_apply_security(pki: Pki) -> None:
    security = sasl_ssl(pki)
    made_producer = producer("broker:9093", read_to_end_safe=True, security=security)
    made_consumer = consumer("broker:9093", "t", group_id="g", security=security)
    admin = admin_client("broker:9093", security=security, client_id="ess-admin-test")
    try:
        for client in (made_producer.client, made_consumer._client, admin._client):
            assert client._security_protocol == "SASL_SSL"
            assert client._sasl_mechanism == "SCRAM-SHA-512"
            assert client._sasl_plain_username == "ess-svc"
            assert client._sasl_plain_password == PASSWORD
            _assert_verifying(client._ssl_context)
        assert admin._client._client_id == "ess-admin-test"
    finally:
        await made_producer.stop()
        await made_consumer.stop()
        await admin.close()


async def test_constructors_without_security_are_configured_as_before() -> None:
    # What the aiokafka clients were built with before security existed.
    made_producer = producer("broker:9092")
    made_consumer = consumer("broker:9092", group_id=None)
    try:
        for client in (made_producer.client, made_consumer._client):
            assert client._security_protocol == "PLAINTEXT"
            assert client._ssl_context is None
            assert client._sasl_plain_password is None
        explicit = producer("broker:9092", security=PLAINTEXT)
        try:
            assert explicit.client._security_protocol == "PLAINTEXT"
        finally:
            await explicit.stop()
    finally:
        await made_producer.stop()
        await made_consumer.stop()


async def test_overrides_still_win_over_security() -> None:
    security = KafkaSecurity(
        protocol="SASL_PLAINTEXT", sasl_username="ess-svc", sasl_password=SecretStr(PASSWORD)
    )
    made: AIOKafkaProducer = producer("b:1", security=security, sasl_mechanism="SCRAM-SHA-256")
    reader: AIOKafkaConsumer = consumer("b:1", group_id=None, security=security)
    try:
        assert made.client._sasl_mechanism == "SCRAM-SHA-256"
        assert reader._client._sasl_mechanism == "PLAIN"
    finally:
        await made.stop()
        await reader.stop()


# --------------------------------------------------------------------------- Faust


def test_faust_credentials_match_the_aiokafka_kwargs(pki: Pki) -> None:
    """Faust converts its credentials with ``credentials_to_aiokafka_auth``: the result must be
    what ESS's own clients get, so detection and the other roles connect alike."""
    sasl_plaintext = KafkaSecurity(
        protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-256",
        sasl_username="ess-svc",
        sasl_password=SecretStr(PASSWORD),
    )
    tls = KafkaSecurity(protocol="SSL", ssl_cafile=pki.cafile)
    for security in (sasl_ssl(pki), sasl_plaintext, tls):
        auth = dict(credentials_to_aiokafka_auth(security.faust_credentials()))
        ours = security.aiokafka_kwargs()
        if security.uses_ssl:
            _assert_verifying(auth["ssl_context"])
        else:
            assert auth.pop("ssl_context") is None
        assert _without_context(auth) == _without_context(ours)


def test_faust_credential_types(pki: Pki) -> None:
    credentials = sasl_ssl(pki).faust_credentials()
    assert isinstance(credentials, faust.SASLCredentials)
    assert credentials.protocol.value == "SASL_SSL"
    assert credentials.mechanism.value == "SCRAM-SHA-512"
    assert isinstance(KafkaSecurity(protocol="SSL").faust_credentials(), faust.SSLCredentials)


class _NoOutputs:
    async def send_trips(self, commands: Any) -> None:  # pragma: no cover - never started
        raise AssertionError

    async def send_dead_letters(self, letters: Any) -> None:  # pragma: no cover
        raise AssertionError


def test_detection_app_gets_broker_credentials(
    pki: Pki, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)  # Faust creates its data directory in the working directory
    registry = topic_registry("sec", input_partitions=1)
    plain = DetectorSettings(bootstrap="b:1", registry=registry)
    assert plain.security == PLAINTEXT
    app = create_app(plain, outputs=_NoOutputs(), epoch=StaticEpoch())
    assert app.conf.broker_credentials is None

    settings = DetectorSettings(bootstrap="b:1", registry=registry, security=sasl_ssl(pki))
    app = create_app(settings, outputs=_NoOutputs(), epoch=StaticEpoch())
    credentials = app.conf.broker_credentials
    assert isinstance(credentials, faust.SASLCredentials)
    assert credentials.username == "ess-svc"
    assert credentials.protocol.value == "SASL_SSL"


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"protocol": "SASL_SSL"}, "needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD"),
        (
            {"protocol": "SASL_PLAINTEXT", "sasl_username": "u"},
            "needs KAFKA_SASL_PASSWORD",
        ),
        (
            {"protocol": "SASL_PLAINTEXT", "sasl_username": "u", "sasl_password": SecretStr("")},
            "needs KAFKA_SASL_PASSWORD",
        ),
        ({"protocol": "PLAINTEXT", "sasl_username": "u"}, "KAFKA_SASL_USERNAME set but"),
        ({"protocol": "SSL", "sasl_mechanism": "PLAIN"}, "KAFKA_SASL_MECHANISM set but"),
        ({"protocol": "TLS"}, "KAFKA_SECURITY_PROTOCOL='TLS' is not one of"),
        (
            {"protocol": "SASL_SSL", "sasl_mechanism": "GSSAPI"},
            "KAFKA_SASL_MECHANISM='GSSAPI' is not one of",
        ),
        ({"protocol": "SSL", "ssl_cafile": Path("/nonexistent/ca.pem")}, "no such file"),
    ],
)
def test_inconsistent_settings_are_refused_with_the_setting_name(
    kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(KafkaSecurityError, match=message.replace("(", r"\(")):
        KafkaSecurity(**kwargs)


def test_tls_files_need_a_tls_protocol(pki: Pki) -> None:
    with pytest.raises(KafkaSecurityError, match="KAFKA_SSL_CAFILE set but"):
        KafkaSecurity(
            protocol="SASL_PLAINTEXT",
            sasl_username="u",
            sasl_password=SecretStr(PASSWORD),
            ssl_cafile=pki.cafile,
        )


def test_a_key_needs_its_certificate(pki: Pki) -> None:
    with pytest.raises(KafkaSecurityError, match="KAFKA_SSL_KEYFILE needs KAFKA_SSL_CERTFILE"):
        KafkaSecurity(protocol="SSL", ssl_keyfile=pki.keyfile)


# --------------------------------------------------------------------------- settings


def test_settings_default_to_plaintext() -> None:
    settings = EssSettings(_env_file=None)
    assert settings.kafka_security() == PLAINTEXT


def test_settings_from_the_environment(pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka-1:9093,kafka-2:9093")
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "sasl_ssl")  # spelling is forgiven
    monkeypatch.setenv("KAFKA_SASL_MECHANISM", "scram-sha-256")
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "ess-svc")
    monkeypatch.setenv("ESS_KAFKA_SASL_PASSWORD", PASSWORD)  # the ESS_ alias works too
    monkeypatch.setenv("KAFKA_SSL_CAFILE", str(pki.cafile))
    monkeypatch.setenv("KAFKA_SSL_CERTFILE", "")  # blank means unset, not "."
    security = EssSettings(_env_file=None).kafka_security()
    assert security == KafkaSecurity(
        protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-256",
        sasl_username="ess-svc",
        sasl_password=SecretStr(PASSWORD),
        ssl_cafile=pki.cafile,
    )


def test_settings_refuse_security_for_the_embedded_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SSL")
    with pytest.raises(ValidationError, match="embedded broker speaks PLAINTEXT only"):
        EssSettings(_env_file=None)


def test_settings_errors_name_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka:9093")
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "ess-svc")
    with pytest.raises(ValidationError, match="needs KAFKA_SASL_PASSWORD"):
        EssSettings(_env_file=None)
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "KERBEROS")
    with pytest.raises(ValidationError, match=r"KAFKA_SECURITY_PROTOCOL\n.*'SASL_SSL'"):
        EssSettings(_env_file=None)


# --------------------------------------------------------------------------- secrecy


@pytest.fixture
def log_output() -> Iterator[io.StringIO]:
    sink = io.StringIO()
    handler = logger.add(sink, serialize=True, level="DEBUG")
    try:
        yield sink
    finally:
        logger.remove(handler)


def test_the_password_is_never_printed(
    pki: Pki, monkeypatch: pytest.MonkeyPatch, log_output: io.StringIO
) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka:9093")
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "ess-svc")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", PASSWORD)
    settings = EssSettings(_env_file=None)
    security = settings.kafka_security()
    detector = DetectorSettings.from_settings(settings)
    shown = [
        repr(settings),
        str(settings),
        repr(security),
        str(security),
        security.describe(),
        repr(security.faust_credentials()),
        repr(detector),
        str(settings.model_dump()),
    ]
    logger.bind(security=security, settings=settings).info("connecting: {}", security)
    logger.bind(kafka=security.describe()).warning("kafka security in force")
    shown.append(log_output.getvalue())
    for text in shown:
        assert PASSWORD not in text
    assert "ess-svc" in security.describe()
    assert "SASL_SSL" in log_output.getvalue()


def test_a_failed_validation_does_not_echo_the_password(monkeypatch: pytest.MonkeyPatch) -> None:
    # A model-level error would otherwise print every input, the password included.
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka:9093")
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", PASSWORD)
    with pytest.raises(ValidationError) as caught:
        EssSettings(_env_file=None)
    assert "needs KAFKA_SASL_USERNAME" in str(caught.value)
    assert PASSWORD not in str(caught.value)
    assert PASSWORD not in repr(caught.value)
