"""TLS certificates for the DERP server: self-signed lab certificates, a private CA for tests, and loading.

Generation uses `cryptography` (ECDSA P-256, SAN = the host name or IP). `derper --certmode selfsigned`
(`derp.aio.certstore.selfsigned_files`, kept in --certdir) and the tests use it; `manual` mode loads
`<certdir>/<hostname>.crt` and `.key` as Tailscale's derper does (`derp.aio.tls.load_server_context`).
"""
from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from derp.aio.tls import server_context  # noqa: F401  (re-exported for callers of this module)


@dataclass(frozen=True)
class CertPair:
    cert_pem: bytes
    key_pem: bytes

    def leaf_sha256(self) -> str:
        """Hex SHA-256 of the DER leaf, as used by a DERP map `CertName: sha256-raw:<hex>`."""
        der = x509.load_pem_x509_certificate(self.cert_pem).public_bytes(serialization.Encoding.DER)
        return hashlib.sha256(der).hexdigest()


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_ca(common_name: str = "wgc test CA") -> CertPair:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    return CertPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def make_cert(hostnames: list[str], ca: CertPair | None = None, days: int = 90) -> CertPair:
    """A leaf certificate for `hostnames` valid for `days`, signed by `ca` or self-signed when ca is None."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0])])
    now = datetime.datetime.now(datetime.timezone.utc)
    if ca is not None:
        ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
        ca_key = serialization.load_pem_private_key(ca.key_pem, None)
        issuer = ca_cert.subject
    else:
        ca_key, issuer = key, subject
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(hours=1))
               .not_valid_after(now + datetime.timedelta(days=days))
               .add_extension(x509.SubjectAlternativeName([_san(h) for h in hostnames]), critical=False)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                              critical=False))
    cert = builder.sign(ca_key, hashes.SHA256())
    return CertPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def cert_not_after(path: str) -> float | None:
    """The notAfter of the first certificate in PEM file `path` as Unix time, or None when the file cannot
    be read or holds no certificate."""
    try:
        with open(path, "rb") as fh:
            cert = x509.load_pem_x509_certificate(fh.read())
    except (OSError, ValueError):
        return None
    if hasattr(cert, "not_valid_after_utc"):  # cryptography >= 42
        return cert.not_valid_after_utc.timestamp()
    return cert.not_valid_after.replace(tzinfo=datetime.timezone.utc).timestamp()


def write_pair(pair: CertPair, cert_path: str, key_path: str) -> None:
    with open(cert_path, "wb") as fh:
        fh.write(pair.cert_pem)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pair.key_pem)
