"""Keys and certificates: making them, and telling whether one still fits its spec."""

import datetime
import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Certificates start an hour in the past, so that a node whose clock lags a little at first
# boot (before NTP) does not reject them as not yet valid.
BACKDATE = datetime.timedelta(hours=1)


@dataclass(frozen=True)
class CertSpec:
    """What one certificate must say. `issuer` None means a self-signed CA."""

    name: str
    common_name: str
    organization: str | None = None
    issuer: str | None = "ca"
    client: bool = False
    server: bool = False
    dns: tuple[str, ...] = ()
    ips: tuple[str, ...] = ()

    @property
    def is_ca(self) -> bool:
        return self.issuer is None


def new_key(algorithm: str):
    if algorithm == "ecdsa-p256":
        return ec.generate_private_key(ec.SECP256R1())
    bits = int(algorithm.removeprefix("rsa-"))
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def key_fits(public_key, algorithm: str) -> bool:
    if algorithm == "ecdsa-p256":
        return isinstance(public_key, ec.EllipticCurvePublicKey) and public_key.curve.name == "secp256r1"
    return isinstance(public_key, rsa.RSAPublicKey) and public_key.key_size == int(algorithm[4:])


def key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def public_pem(key) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def subject(spec: CertSpec) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, spec.common_name)]
    if spec.organization:
        attrs.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, spec.organization))
    return x509.Name(attrs)


def _sans(spec: CertSpec) -> list[x509.GeneralName]:
    return [x509.DNSName(d) for d in spec.dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in spec.ips]


def _usages(spec: CertSpec) -> list:
    return [oid for flag, oid in ((spec.server, ExtendedKeyUsageOID.SERVER_AUTH), (spec.client, ExtendedKeyUsageOID.CLIENT_AUTH)) if flag]


def issue(spec: CertSpec, key, days: int, ca_cert: x509.Certificate | None = None, ca_key=None) -> x509.Certificate:
    """Sign a certificate for `key` as `spec` says, by the CA (or by itself for a CA)."""
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    public = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject(spec))
        .issuer_name(ca_cert.subject if ca_cert else subject(spec))
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
    )
    signer_public = ca_cert.public_key() if ca_cert else public
    builder = builder.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signer_public), critical=False)
    if spec.is_ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        builder = builder.add_extension(_key_usage(cert_sign=True), critical=True)
    else:
        rsa_key = isinstance(public, rsa.RSAPublicKey)
        builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        builder = builder.add_extension(_key_usage(key_encipherment=rsa_key), critical=True)
        builder = builder.add_extension(x509.ExtendedKeyUsage(_usages(spec)), critical=False)
        if spec.dns or spec.ips:
            builder = builder.add_extension(x509.SubjectAlternativeName(_sans(spec)), critical=False)
    return builder.sign(ca_key or key, hashes.SHA256())


def _key_usage(cert_sign=False, key_encipherment=False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=key_encipherment,
        data_encipherment=False, key_agreement=False, key_cert_sign=cert_sign, crl_sign=cert_sign,
        encipher_only=False, decipher_only=False,
    )


def extension(cert: x509.Certificate, kind):
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def misfit(cert: x509.Certificate, spec: CertSpec, algorithm: str, ca_cert: x509.Certificate | None) -> str | None:
    """Why this certificate no longer says what `spec` asks, issued by this CA with this key
    type; None when it does.

    A CA that was re-keyed changes its subject key identifier, so comparing the authority key
    identifier is enough to find the certificates it no longer vouches for.
    """
    if cert.subject != subject(spec):
        return f"its subject is {cert.subject.rfc4514_string()}, not {subject(spec).rfc4514_string()}"
    if not key_fits(cert.public_key(), algorithm):
        return f"its key is not {algorithm}"
    signer = ca_cert or cert
    aki = extension(cert, x509.AuthorityKeyIdentifier)
    ski = extension(signer, x509.SubjectKeyIdentifier)
    if aki is None or ski is None or aki.key_identifier != ski.digest or cert.issuer != signer.subject:
        return "its CA was replaced"
    if spec.is_ca:
        return None
    san = extension(cert, x509.SubjectAlternativeName)
    have = set(san) if san else set()
    if have != set(_sans(spec)):
        return "its names or addresses changed"
    eku = extension(cert, x509.ExtendedKeyUsage)
    if eku is None or set(eku) != set(_usages(spec)):
        return "its usages changed"
    return None


# --- judging the files of a state ------------------------------------------------------------------

def _load(kind: str, data: bytes | None):
    if data is None:
        return None
    try:
        if kind == "key":
            return serialization.load_pem_private_key(data, None)
        return x509.load_pem_x509_certificate(data)
    except (ValueError, TypeError):
        return False


def audit(files: dict[str, bytes], names: list[str]) -> dict[str, str]:
    """What is wrong with each named key or certificate of a state (pki/<name>.key|.crt): not
    PEM, not its partner's pair, or not signed by a CA of the state."""
    out: dict[str, str] = {}
    cas = {}
    for path, data in files.items():
        cert = _load("crt", data) if path.endswith(".crt") else None
        if cert and cert.issuer == cert.subject:
            cas[extension(cert, x509.SubjectKeyIdentifier).digest] = (path, cert)
    for path in names:
        stem, kind = path[:-len(".key")], path[-3:]
        other = f"{stem}.{'crt' if kind == 'key' else 'key'}"
        this = _load(kind, files.get(path))
        partner = _load("crt" if kind == "key" else "key", files.get(other))
        if this is False:
            out[path] = "not a PEM private key" if kind == "key" else "not a PEM certificate"
        elif partner is None and stem != "pki/service-accounts":
            out[path] = f"{other} is missing"
        elif partner is False:
            out[path] = f"{other} is damaged"
        elif partner is not None:
            key, cert = (this, partner) if kind == "key" else (partner, this)
            if key.public_key() != cert.public_key():
                out[path] = f"it and {other} are not a pair"
            elif kind == "crt" and cert.issuer != cert.subject:
                aki = extension(cert, x509.AuthorityKeyIdentifier)
                issuer = cas.get(aki.key_identifier if aki else None)
                try:
                    if issuer is None:
                        raise ValueError
                    cert.verify_directly_issued_by(issuer[1])
                except (ValueError, TypeError, InvalidSignature):
                    out[path] = "not signed by a CA of this state"
    return out
