"""The pure parts behind the derper's certificates: ClientHello SNI/ALPN (for TLS-ALPN-01), a PEM
certificate's validity window, Go-style durations and the renewal schedule (stepped time)."""
from __future__ import annotations

import datetime
import ssl

import pytest
from hypothesis import given, strategies as st
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from derp.aio.certs import make_ca, make_cert
from derp.certpem import pem_certificates, validity
from derp.duration import parse_duration
from derp.errors import ParseError, UsageError
from derp.renewal import Renewal, RenewalConfig, parse_renew_before
from derp.tlshello import ACME_TLS_ALPN, parse_client_hello


def client_hello(server_name: str | None, alpn: list[str] | None) -> bytes:
    """The first flight of a real OpenSSL client (memory BIOs, nothing on the wire)."""
    ctx = ssl.create_default_context()
    if server_name is None:
        ctx.check_hostname = False
    if alpn:
        ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


# ---- ClientHello -----------------------------------------------------------------------------------------
def test_acme_validation_hello_is_recognised() -> None:
    hello = parse_client_hello(client_hello("derp.example.net", ["acme-tls/1"]))
    assert hello is not None and hello.server_name == "derp.example.net"
    assert hello.alpn == (ACME_TLS_ALPN,) and hello.is_acme_validation


@pytest.mark.parametrize("name, alpn", [("derp.example.net", ["http/1.1"]), ("derp.example.net", None),
                                        (None, ["http/1.1"]), ("x.example", ["http/1.1", "acme-tls/1"])])
def test_ordinary_hellos_are_not_validations(name, alpn) -> None:
    hello = parse_client_hello(client_hello(name, alpn))
    assert hello is not None and hello.server_name == name and not hello.is_acme_validation
    assert hello.alpn == tuple(p.encode() for p in alpn or [])


def test_a_partial_hello_asks_for_more_until_complete() -> None:
    data = client_hello("derp.example.net", ["acme-tls/1"])
    for cut in range(len(data)):
        assert parse_client_hello(data[:cut]) is None
    assert parse_client_hello(data + b"\x17\x03\x03") is not None   # bytes after the record are ignored


def test_not_tls_is_a_parse_error() -> None:
    for data in (b"GET / HTTP/1.1\r\n\r\n", b"\x16\x03\x01\x00\x00", b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00"):
        with pytest.raises(ParseError):
            parse_client_hello(data)


@given(st.binary(max_size=600))
def test_garbage_raises_only_parse_error(data: bytes) -> None:
    try:
        parse_client_hello(data)
    except ParseError:
        pass


@given(st.data())
def test_corrupted_real_hello_raises_only_parse_error(data) -> None:
    hello = bytearray(client_hello("derp.example.net", ["acme-tls/1"]))
    for _ in range(data.draw(st.integers(1, 8))):
        hello[data.draw(st.integers(0, len(hello) - 1))] = data.draw(st.integers(0, 255))
    try:
        parse_client_hello(bytes(hello))
    except ParseError:
        pass


# ---- certificate validity ---------------------------------------------------------------------------------
def test_validity_matches_cryptography() -> None:
    ca = make_ca()
    for pair in (ca, make_cert(["derp.example.net", "192.0.2.1"], ca)):
        cert = x509.load_pem_x509_certificate(pair.cert_pem)
        der = pem_certificates(pair.cert_pem + ca.cert_pem)[0]
        assert der == cert.public_bytes(serialization.Encoding.DER)
        assert validity(der) == (cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp())


def test_generalized_time_after_2049() -> None:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "late")])
    late = datetime.datetime(2061, 3, 4, 5, 6, 7, tzinfo=datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(datetime.datetime(1999, 1, 2, tzinfo=datetime.timezone.utc))
            .not_valid_after(late).sign(key, hashes.SHA256()))
    nb, na = validity(cert.public_bytes(serialization.Encoding.DER))
    assert na == late.timestamp() and nb == datetime.datetime(1999, 1, 2, tzinfo=datetime.timezone.utc).timestamp()


def test_pem_without_certificate_is_a_parse_error() -> None:
    with pytest.raises(ParseError):
        pem_certificates(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")


@given(st.binary(max_size=400))
def test_validity_of_garbage_raises_only_parse_error(data: bytes) -> None:
    try:
        validity(data)
    except ParseError:
        pass


CA_DER = pem_certificates(make_ca().cert_pem)[0]


@given(st.data())
def test_validity_of_a_corrupted_certificate_raises_only_parse_error(data) -> None:
    der = bytearray(CA_DER)
    for _ in range(data.draw(st.integers(1, 6))):
        der[data.draw(st.integers(0, 60))] = data.draw(st.integers(0, 255))
    try:
        validity(bytes(der[:data.draw(st.integers(0, len(der)))]))
    except ParseError:
        pass


# ---- durations --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, seconds", [("30s", 30), ("1m30s", 90), ("720h", 720 * 3600), ("1.5h", 5400),
                                           ("250ms", 0.25), ("7d", 7 * 86400), ("45", 45), ("0", 0)])
def test_durations(text, seconds) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "10x", "-5s", "1h-5m", "nan", "inf", "5 s"])
def test_bad_durations_are_usage_errors(text) -> None:
    with pytest.raises(UsageError):
        parse_duration(text)


# ---- renewal schedule (Unix seconds, stepped) ------------------------------------------------------------
DAY = 86400.0


def test_default_renews_when_a_third_of_the_lifetime_remains() -> None:
    r = Renewal(RenewalConfig())
    assert r.due(0.0) and r.next_deadline(0.0) == 0.0          # no certificate: obtain one at once
    r.on_certificate(0.0, 90 * DAY)
    assert r.renew_at() == pytest.approx(60 * DAY)
    assert not r.due(60 * DAY - 1) and r.due(60 * DAY)
    assert r.next_deadline(0.0) == RenewalConfig.recheck_max    # long sleeps are cut to the recheck interval
    assert r.next_deadline(60 * DAY - 10) == pytest.approx(60 * DAY)


def test_a_duration_is_clamped_to_half_the_lifetime() -> None:
    before, fraction = parse_renew_before("720h")
    r = Renewal(RenewalConfig(renew_before=before, renew_fraction=fraction))
    r.on_certificate(0.0, 90 * DAY)
    assert r.renew_at() == pytest.approx(60 * DAY)
    r.on_certificate(0.0, 6 * DAY)                               # a short-lived certificate: not due at once
    assert r.renew_at() == pytest.approx(3 * DAY)


def test_failures_back_off_and_success_resets() -> None:
    r = Renewal(RenewalConfig(retry_min=60, retry_max=600))
    r.on_certificate(0.0, 90 * DAY)
    now = 60 * DAY
    delays = []
    for _ in range(6):
        assert r.due(now)
        at = r.on_failure(now)
        delays.append(at - now)
        assert not r.due(at - 1)
        now = at
    assert delays == [60, 120, 240, 480, 600, 600]
    r.on_certificate(now, now + 90 * DAY)
    assert r.failures == 0 and not r.due(now + 1)


def test_due_now_orders_at_once_and_keeps_the_window() -> None:
    r = Renewal(RenewalConfig())
    r.on_certificate(0.0, 90 * DAY)
    r.due_now(5.0)
    assert r.due(5.0) and r.window == (0.0, 90 * DAY)


@pytest.mark.parametrize("text", ["0%", "100%", "x%", "0s", "soon"])
def test_bad_renew_before_is_a_usage_error(text) -> None:
    with pytest.raises(UsageError):
        parse_renew_before(text)
