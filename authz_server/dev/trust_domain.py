"""Mint a throwaway SPIFFE trust domain: a CA, X.509-SVIDs, bundles.

For the demo, the tests and local experiments only. Production SVIDs come from
SPIRE (or another SPIFFE implementation) through the Workload API.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PrivateKey = ec.EllipticCurvePrivateKey


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@dataclass(frozen=True)
class Svid:
    """An X.509-SVID with its key and the intermediates (if any) between it and the root."""

    certificate: x509.Certificate
    key: PrivateKey
    intermediates: tuple[x509.Certificate, ...] = ()

    @property
    def cert_pem(self) -> bytes:
        return _pem(self.certificate)

    @property
    def chain_pem(self) -> bytes:
        """Leaf first, then intermediates: what a TLS peer presents."""
        return self.cert_pem + b"".join(_pem(c) for c in self.intermediates)

    @property
    def key_pem(self) -> bytes:
        return _key_pem(self.key)

    def write(self, directory: Path, name: str) -> tuple[Path, Path]:
        """Write `<name>.pem` (leaf and intermediates) and `<name>.key`; return their paths."""
        directory.mkdir(parents=True, exist_ok=True)
        cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
        cert_path.write_bytes(self.chain_pem)
        key_path.write_bytes(self.key_pem)
        key_path.chmod(0o600)
        return cert_path, key_path


@dataclass
class TrustDomainCA:
    """The root of one trust domain, able to issue SVIDs and intermediate CAs."""

    name: str
    certificate: x509.Certificate
    key: PrivateKey
    parents: tuple[x509.Certificate, ...] = field(default=())
    """For an intermediate CA: the chain above it, nearest first (root excluded)."""

    @classmethod
    def create(
        cls, name: str, *, ttl: dt.timedelta = dt.timedelta(days=30), valid_from: dt.datetime | None = None
    ) -> TrustDomainCA:
        """`valid_from`: when the root starts being valid (default: now); the risk lab mints days in the past."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name(
            [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "SPIFFE"), x509.NameAttribute(NameOID.COMMON_NAME, name)]
        )
        now = valid_from or _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + ttl)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"spiffe://{name}")]), False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(name, cert, key)

    @property
    def bundle_pem(self) -> bytes:
        """The trust bundle: the root certificate(s) others verify SVIDs of this domain with."""
        root = self.parents[-1] if self.parents else self.certificate
        return _pem(root)

    def write_bundle(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.bundle_pem)
        return path

    def _builder(
        self, public_key: ec.EllipticCurvePublicKey, not_before: dt.datetime, not_after: dt.datetime, subject: x509.Name
    ) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.certificate.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
        )

    def intermediate(self, *, ttl: dt.timedelta = dt.timedelta(days=7)) -> TrustDomainCA:
        """A CA below this one, for SVIDs whose chain must come from XFCC `Chain` or the bundle."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{self.name} intermediate")])
        cert = (
            self._builder(key.public_key(), now - dt.timedelta(minutes=5), now + ttl, subject)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"spiffe://{self.name}")]), False
            )
            .sign(self.key, hashes.SHA256())
        )
        return TrustDomainCA(self.name, cert, key, (self.certificate, *self.parents))

    def issue(
        self,
        spiffe_id: str | None,
        *,
        ttl: dt.timedelta = dt.timedelta(hours=1),
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
        extra_uris: tuple[str, ...] = (),
        dns_names: tuple[str, ...] = (),
        is_ca: bool = False,
        digital_signature: bool = True,
    ) -> Svid:
        """Issue an X.509-SVID for spiffe_id (None: no URI SAN). The keyword arguments exist so
        tests can mint every kind of bad certificate a real attacker or a broken CA produces."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        start = not_before or now - dt.timedelta(minutes=1)
        end = not_after or start + ttl
        names: list[x509.GeneralName] = []
        if spiffe_id is not None:
            names.append(x509.UniformResourceIdentifier(spiffe_id))
        names += [x509.UniformResourceIdentifier(u) for u in extra_uris]
        names += [x509.DNSName(d) for d in dns_names]
        subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "SPIRE")])
        builder = self._builder(key.public_key(), start, end, subject)
        builder = builder.add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature, False, not is_ca, False, not is_ca and False, is_ca, is_ca, False, False),
            critical=True,
        )
        if not is_ca:
            builder = builder.add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        chain = (self.certificate, *self.parents[:-1]) if self.parents else ()
        return Svid(cert, key, chain)

    def tangled_chain(self, spiffe_id: str, count: int) -> tuple[x509.Certificate, tuple[x509.Certificate, ...]]:
        """An attack on chain building: a leaf for spiffe_id and `count` CA certificates that all carry this CA's
        subject and share one attacker key, so each validly signs every other and a naive path search tries
        every ordering. None of them chains to this CA's real key."""
        key = ec.generate_private_key(ec.SECP256R1())
        start = _now() - dt.timedelta(minutes=1)

        def make(is_ca: bool) -> x509.Certificate:
            builder = (
                x509.CertificateBuilder()
                .subject_name(self.certificate.subject if is_ca else x509.Name([]))
                .issuer_name(self.certificate.subject)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(start)
                .not_valid_after(start + dt.timedelta(hours=1))
                .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
                .add_extension(
                    x509.KeyUsage(not is_ca, False, False, False, False, is_ca, is_ca, False, False), critical=True
                )
            )
            if not is_ca:
                san = x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)])
                builder = builder.add_extension(san, critical=False)
            return builder.sign(key, hashes.SHA256())

        return make(False), tuple(make(True) for _ in range(count))
