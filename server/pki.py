"""The federation's keys, made with ``cryptography``: a certificate authority, the SuperLink's
TLS certificate (subject alternative names for the host names and IPs sites dial), and each
site's key pair for Flower's SuperNode authentication (ECDSA P-384, OpenSSH encoding, which
``flwr supernode register`` and ``flower-supernode --auth-supernode-private-key`` read).

Private keys are written with mode 0600 and never printed; nothing is overwritten — an existing
CA or site key is an error, so a typo cannot silently replace the federation's trust root.

Layout of a PKI folder::

    ca.crt  ca.key               the CA (ca.key stays with the coordinator, offline if possible)
    server.pem  server.key       the SuperLink's certificate and key (--certs-dir)
    sites/NAME/site.key          a site's private key (hand it to the site, then delete it here)
    sites/NAME/site.pub          its public key (registered with the SuperLink)
    sites/NAME/ca.crt            a copy of the CA certificate: sites/NAME/ is the site's whole bundle
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CURVE = ec.SECP384R1


class PKIError(ValueError):
    """The PKI folder is missing something, or would be overwritten."""


def _write_secret(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0600 from the start (no window where others may read it)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def init_pki(folder: Path, hosts: list[str], days: int = 825, name: str = "RetinaFL federation") -> list[Path]:
    """Create the CA and the SuperLink certificate for ``hosts``; returns the files written."""
    folder.mkdir(parents=True, exist_ok=True)
    existing = [p for p in (folder / "ca.key", folder / "ca.crt", folder / "server.key", folder / "server.pem")
                if p.exists()]
    if existing:
        raise PKIError(f"{folder} already holds {', '.join(p.name for p in existing)}; refusing to overwrite the "
                       "federation's keys (choose another folder or remove them deliberately)")
    if not hosts:
        raise PKIError("pki init needs at least one --host (a name or IP address sites dial)")
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(CURVE())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=days))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA384()))
    server_key = ec.generate_private_key(CURVE())
    server = (x509.CertificateBuilder()
              .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
              .issuer_name(ca.subject).public_key(server_key.public_key())
              .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
              .not_valid_after(now + datetime.timedelta(days=days))
              .add_extension(x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False)
              .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
              .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
              .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
              .sign(ca_key, hashes.SHA384()))
    _write_secret(folder / "ca.key", _pem_key(ca_key))
    (folder / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    _write_secret(folder / "server.key", _pem_key(server_key))
    (folder / "server.pem").write_bytes(server.public_bytes(serialization.Encoding.PEM))
    return [folder / n for n in ("ca.crt", "ca.key", "server.pem", "server.key")]


def site_dir(folder: Path, name: str) -> Path:
    """``PKI/sites/NAME`` (the name must be a plain identifier: it becomes a folder)."""
    if not name or not all(c.isalnum() or c in "-_." for c in name) or name.startswith("."):
        raise PKIError(f"site name {name!r}: use letters, digits, '-', '_' or '.'")
    return folder / "sites" / name


def add_site(folder: Path, name: str) -> tuple[Path, Path]:
    """Create a site's SuperNode key pair; returns (private key, public key) paths."""
    if not (folder / "ca.crt").is_file():
        raise PKIError(f"{folder}: no ca.crt; run retina-server pki init first")
    target = site_dir(folder, name)
    if (target / "site.key").exists() or (target / "site.pub").exists():
        raise PKIError(f"{target}: site {name!r} already has keys; refusing to overwrite them")
    target.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(CURVE())
    _write_secret(target / "site.key", key.private_bytes(serialization.Encoding.PEM,
                                                         serialization.PrivateFormat.OpenSSH,
                                                         serialization.NoEncryption()))
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    (target / "site.pub").write_bytes(public + f" {name}\n".encode())
    (target / "ca.crt").write_bytes((folder / "ca.crt").read_bytes())
    return target / "site.key", target / "site.pub"


def check_public_key(path: Path) -> None:
    """Refuse anything but an OpenSSH ECDSA public key (what Flower's SuperNode auth accepts)."""
    try:
        key = serialization.load_ssh_public_key(path.read_bytes().strip())
    except (ValueError, OSError) as exc:
        raise PKIError(f"{path}: not an OpenSSH public key ({exc})") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise PKIError(f"{path}: a {type(key).__name__}; SuperNode authentication needs an ECDSA (NIST curve) key")
