"""The little the derper needs to know about an X.509 certificate without loading `cryptography`: the DER
blocks of a PEM file and a certificate's validity window (RFC 5280 4.1.2.5), for renewal timing, the
expiry metric and "serving the certificate valid until ..." log lines.

`pem_certificates(pem) -> [der, ...]`; `validity(der) -> (not_before, not_after)` in Unix seconds (UTC).
Both raise `ParseError` for anything malformed.
"""
from __future__ import annotations

import binascii
import datetime
import re

from derp.errors import ParseError

_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----\s*(.*?)\s*-----END CERTIFICATE-----", re.S)
_SEQ, _INT, _UTCTIME, _GENTIME, _V3 = 0x30, 0x02, 0x17, 0x18, 0xA0


def pem_certificates(pem: bytes) -> list[bytes]:
    out = []
    for block in _PEM.findall(pem):
        try:
            out.append(binascii.a2b_base64(block))
        except (binascii.Error, ValueError):
            raise ParseError("a CERTIFICATE block is not base64") from None
    if not out:
        raise ParseError("no PEM CERTIFICATE block")
    return out


def _tlv(der: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """(tag, start of contents, end of contents) of the element at `pos`."""
    if pos + 2 > end:
        raise ParseError("DER element truncated")
    tag, first = der[pos], der[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        n = first & 0x7F
        if n == 0 or n > 4 or pos + n > end:
            raise ParseError("bad DER length")
        length = int.from_bytes(der[pos:pos + n], "big")
        pos += n
    if pos + length > end:
        raise ParseError("DER element runs past its end")
    return tag, pos, pos + length


def _time(tag: int, raw: bytes) -> float:
    try:
        text = raw.decode("ascii")
        if tag == _UTCTIME and len(text) == 13 and text.endswith("Z"):
            year = int(text[:2])
            year += 2000 if year < 50 else 1900          # RFC 5280 4.1.2.5.1
            rest = text[2:12]
        elif tag == _GENTIME and len(text) == 15 and text.endswith("Z"):
            year, rest = int(text[:4]), text[4:14]
        else:
            raise ParseError("certificate time is neither UTCTime nor GeneralizedTime in UTC")
        if not rest.isdigit():
            raise ValueError(rest)
        when = datetime.datetime(year, int(rest[0:2]), int(rest[2:4]), int(rest[4:6]), int(rest[6:8]),
                                 int(rest[8:10]), tzinfo=datetime.timezone.utc)
    except (UnicodeDecodeError, ValueError):
        raise ParseError("bad certificate time") from None
    return when.timestamp()


def validity(der: bytes) -> tuple[float, float]:
    end = len(der)
    tag, pos, cert_end = _tlv(der, 0, end)
    if tag != _SEQ:
        raise ParseError("a certificate is a DER SEQUENCE")
    tag, pos, tbs_end = _tlv(der, pos, cert_end)
    if tag != _SEQ:
        raise ParseError("tbsCertificate is not a SEQUENCE")
    tag, start, stop = _tlv(der, pos, tbs_end)
    if tag == _V3:                                  # [0] EXPLICIT version
        pos = stop
        tag, start, stop = _tlv(der, pos, tbs_end)
    if tag != _INT:
        raise ParseError("certificate serial number missing")
    pos = stop
    for what in ("signature algorithm", "issuer"):
        tag, start, stop = _tlv(der, pos, tbs_end)
        if tag != _SEQ:
            raise ParseError(f"certificate {what} is not a SEQUENCE")
        pos = stop
    tag, pos, val_end = _tlv(der, pos, tbs_end)
    if tag != _SEQ:
        raise ParseError("certificate validity is not a SEQUENCE")
    times = []
    for _ in range(2):
        tag, start, stop = _tlv(der, pos, val_end)
        times.append(_time(tag, der[start:stop]))
        pos = stop
    return times[0], times[1]
