"""Keys and certificates for one apiserver, made on the fly with the openssl command."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ._util import run


@dataclass(frozen=True)
class Pki:
    """A CA, the apiserver's serving certificate signed by it, and the service-account key pair."""

    ca_crt: Path
    ca_key: Path
    server_crt: Path
    server_key: Path
    sa_key: Path
    sa_pub: Path


def make_pki(directory: Path, *, ips: list[str], dns: list[str]) -> Pki:
    """Create the PKI in ``directory`` (EC P-256 keys: fast to make; RSA for service accounts)."""
    d = directory
    d.mkdir(parents=True, exist_ok=True)
    ca_key, ca_crt = d / "ca.key", d / "ca.crt"
    key, csr, crt = d / "apiserver.key", d / "apiserver.csr", d / "apiserver.crt"
    sa_key, sa_pub = d / "sa.key", d / "sa.pub"
    run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(ca_key)])
    run(
        ["openssl", "req", "-x509", "-new", "-key", str(ca_key), "-out", str(ca_crt), "-days", "7"]
        + ["-subj", "/CN=twe2e-ca", "-addext", "basicConstraints=critical,CA:TRUE"]
        + ["-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature"]
    )
    run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(key)])
    run(["openssl", "req", "-new", "-key", str(key), "-out", str(csr), "-subj", "/CN=kube-apiserver"])
    san = ",".join([f"IP:{ip}" for ip in ips] + [f"DNS:{name}" for name in dns])
    ext = d / "apiserver.ext"
    ext.write_text(
        f"subjectAltName={san}\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\n"
        "basicConstraints=critical,CA:FALSE\n"
    )
    run(
        ["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey", str(ca_key)]
        + ["-CAcreateserial", "-out", str(crt), "-days", "7", "-extfile", str(ext)]
    )
    # Service-account tokens are RS256 by default.
    run(["openssl", "genrsa", "-out", str(sa_key), "2048"])
    run(["openssl", "rsa", "-in", str(sa_key), "-pubout", "-out", str(sa_pub)])
    for p in (ca_key, key, sa_key):
        p.chmod(0o600)
    return Pki(ca_crt, ca_key, crt, key, sa_key, sa_pub)
