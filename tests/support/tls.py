"""A private CA made at test time with the openssl command, and server certificates it signs:
valid for 127.0.0.1, for another name, or expired; each as a server `ssl.SSLContext`."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

_CONFIG = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = {cn}
[ca_ext]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[ca]
default_ca = local
[local]
dir = {dir}
database = {dir}/index.txt
new_certs_dir = {dir}
certificate = {dir}/ca.pem
private_key = {dir}/ca.key
serial = {dir}/serial
default_md = sha256
policy = anything
unique_subject = no
[anything]
commonName = supplied
[leaf_ext]
basicConstraints = CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = ${{ENV::SAN}}
"""
_EC_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y%m%d%H%M%SZ")


class PrivateCa:
    """A CA in `where` (ca.pem is what refreshd's ca_file names) that signs leaves."""

    def __init__(self, where: Path, name: str = "refreshd test CA") -> None:
        openssl = shutil.which("openssl")
        if openssl is None:
            pytest.skip("the openssl command is needed to make a private CA")
        self._openssl = openssl
        self.dir = where
        where.mkdir(parents=True, exist_ok=True)
        (where / "index.txt").write_text("")
        (where / "serial").write_text("1000\n")
        self._config = where / "openssl.cnf"
        self._config.write_text(_CONFIG.format(cn=name, dir=where))
        self.ca = where / "ca.pem"
        self._run(
            "req", "-x509", *_EC_KEY, "-days", "2", "-extensions", "ca_ext",
            "-keyout", where / "ca.key", "-out", self.ca,
        )  # fmt: skip

    def _run(self, *args: str | Path, san: str = "IP:127.0.0.1") -> None:
        subprocess.run(
            [self._openssl, *map(str, args), "-config", str(self._config)],
            check=True,
            capture_output=True,
            timeout=30,
            env={"SAN": san, "PATH": "/usr/bin:/bin"},
        )

    def leaf(
        self, label: str, *, san: str = "IP:127.0.0.1", expired: bool = False
    ) -> tuple[Path, Path]:
        """(certificate, key) signed by this CA for `san`; `expired`: valid only last year."""
        cert, key, csr = (self.dir / f"{label}.{ext}" for ext in ("pem", "key", "csr"))
        self._run("req", "-new", *_EC_KEY, "-keyout", key, "-out", csr, san=san)
        now = datetime.now(UTC)
        start, end = now - timedelta(hours=1), now + timedelta(days=2)
        if expired:
            start, end = now - timedelta(days=400), now - timedelta(days=35)
        self._run(
            "ca", "-batch", "-notext", "-extensions", "leaf_ext", "-in", csr, "-out", cert,
            "-startdate", _stamp(start), "-enddate", _stamp(end), san=san,
        )  # fmt: skip
        return cert, key

    def server_context(
        self, label: str, *, san: str = "IP:127.0.0.1", expired: bool = False
    ) -> ssl.SSLContext:
        """A server-side context presenting a leaf of this CA (see `leaf`)."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*self.leaf(label, san=san, expired=expired))
        return context
