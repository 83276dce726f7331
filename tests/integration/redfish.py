"""A real Redfish BMC for integration tests: sushy-emulator over libvirt's test driver.

Fixture (import it into the test module explicitly)::

    from tests.integration.redfish import redfish_bmc  # noqa: F401

``redfish_bmc`` (function scope) yields a :class:`RedfishBmc`. It runs
sushy-tools' Flask application **in the test process**, served by a werkzeug
server on 127.0.0.1 (a free port) in a daemon thread, over HTTPS with a
self-signed certificate made for the occasion (IP SAN 127.0.0.1; the
certificate file doubles as the CA bundle that trusts it), with HTTP basic
authentication from an htpasswd file (bcrypt at cost 4, so a request costs
about a millisecond rather than a quarter of a second).

The emulator's system backend is libvirt's in-process ``test:///default``
driver. That driver's state lives only while some connection is open, so the
fixture opens one and holds it for the test: it defines and starts a domain
with a fixed UUID (the Redfish system), and the test can both drive Redfish
and look at (or change) the "hardware" through ``RedfishBmc.domain``. The
driver's own default domain ``test`` is there too, so the service lists two
systems.

Isolation: sushy-tools' application is a module-level singleton. The fixture
snapshots its configuration and WSGI callable first and puts them back at
teardown, and drops the application's memoized backends before and after, so
no setting (auth file, state dir, libvirt URI) leaks into another test. At
teardown the server is shut down and its thread joined, the domain destroyed
and undefined, and the libvirt connection closed (which discards the test
driver's state).
"""

from __future__ import annotations

import contextlib
import datetime
import importlib
import ipaddress
import ssl
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import bcrypt
import libvirt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from werkzeug.serving import BaseWSGIServer, make_server

from cloudha.oobm.power import OobmConfig

__all__ = [
    "DOMAIN_NAME",
    "PASSWORD",
    "SYSTEM_ID",
    "USERNAME",
    "RedfishBmc",
    "emulator_app",
    "make_self_signed_certificate",
    "redfish_bmc",
]

SYSTEM_ID = "5f0c2d1e-8a4b-4c3d-9e2f-1a2b3c4d5e6f"
"""The UUID of the fixture's domain, which is the Redfish system id."""
DOMAIN_NAME = "cloudha-redfish-node"
USERNAME = "cloudha-admin"
PASSWORD = "Rf-pw-7Kq2-never-logged"
"""Distinctive, so a test can look for it in logs and messages."""
HOST_ID = "rf-host-1"

_DOMAIN_XML = (
    "<domain type='test'>"
    f"<name>{DOMAIN_NAME}</name><uuid>{SYSTEM_ID}</uuid>"
    "<memory>131072</memory><vcpu>1</vcpu><os><type>hvm</type></os>"
    "</domain>"
)
_MISSING = object()


@attrs.frozen
class RedfishBmc:
    """A running sushy-emulator and the libvirt domain behind its system.

    Attributes:
        address: the address it listens on (127.0.0.1).
        port: its TCP port (HTTPS).
        username: the user the htpasswd file accepts.
        password: that user's password.
        system: the Redfish system id (the domain's UUID).
        ca_path: the server's self-signed certificate in PEM (a CA bundle
            that trusts it).
        domain: the domain on :attr:`connection` (``isActive()``, ``create()``...).
        connection: the held ``test:///default`` connection.
    """

    address: str
    port: int
    username: str
    password: str = attrs.field(repr=False)
    system: str
    ca_path: Path
    domain: Any
    connection: Any

    @property
    def system_path(self) -> str:
        """``/redfish/v1/Systems/<system>``."""
        return f"/redfish/v1/Systems/{self.system}"

    def config(self, **overrides: Any) -> OobmConfig:
        """An OobmConfig for this BMC (driver ``redfish``, option ``system``) with ``overrides``."""
        base = OobmConfig(
            driver="redfish",
            address=self.address,
            username=self.username,
            password=self.password,
            port=self.port,
            host_id=HOST_ID,
            options={"system": self.system},
        )
        return attrs.evolve(base, **overrides)


def emulator_app() -> Any:
    """sushy-tools' Flask application (imported lazily).

    Importing it imports ``webob``, which imports the deprecated ``cgi``
    module; that DeprecationWarning is not ours and is silenced here (the
    test suite turns warnings into errors).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        # importlib rather than an import statement: sushy-tools ships no
        # type information, and the app is used untyped anyway.
        emulator_main = importlib.import_module("sushy_tools.emulator.main")
    return emulator_main.app


def make_self_signed_certificate(directory: Path, ip: str = "127.0.0.1") -> tuple[Path, Path]:
    """Write a self-signed server certificate for ``ip`` and its key; return their paths.

    The certificate is its own CA (basicConstraints CA:TRUE), so the
    certificate file is a CA bundle a client can verify the server with.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ip)])
    now = datetime.datetime.now(datetime.UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]),
            critical=False,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    cert_path = directory / "bmc-cert.pem"
    key_path = directory / "bmc-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def _write_htpasswd(path: Path, username: str, password: str) -> None:
    digest = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    path.write_text(f"{username}:{digest}\n")


def _drop_memoized(app: Any) -> None:
    # sushy-tools memoizes its backends (systems, managers...) in app._cache,
    # and the libvirt backend memoizes domain objects, which keep their
    # libvirt connection alive.
    app.__dict__.pop("_cache", None)


def _remove_domain(connection: Any) -> None:
    for domain in connection.listAllDomains():
        if domain.UUIDString() == SYSTEM_ID:
            with contextlib.suppress(libvirt.libvirtError):
                if domain.isActive():
                    domain.destroy()
                domain.undefine()


@pytest.fixture
def redfish_bmc(tmp_path: Path) -> Iterator[RedfishBmc]:
    """A sushy-emulator over HTTPS + basic auth in this process, backed by ``test:///default``."""
    app = emulator_app()
    saved_config = dict(app.config)
    saved_wsgi = app.__dict__.get("wsgi_app", _MISSING)
    workdir = tmp_path / "redfish"
    workdir.mkdir()
    cert_path, key_path = make_self_signed_certificate(workdir)
    htpasswd = workdir / "htpasswd"
    _write_htpasswd(htpasswd, USERNAME, PASSWORD)
    ssl_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ssl_context.load_cert_chain(cert_path, key_path)

    connection = libvirt.open("test:///default")
    server: BaseWSGIServer | None = None
    thread: threading.Thread | None = None
    try:
        _remove_domain(connection)  # a leftover of an interrupted run in this process
        domain = connection.defineXML(_DOMAIN_XML)
        domain.create()
        _drop_memoized(app)
        app.configure(
            extra_config={
                "SUSHY_EMULATOR_LIBVIRT_URI": "test:///default",
                "SUSHY_EMULATOR_FAKE_DRIVER": False,
                "SUSHY_EMULATOR_STATE_DIR": str(workdir / "state"),
                "SUSHY_EMULATOR_AUTH_FILE": str(htpasswd),
                "SUSHY_EMULATOR_FEATURE_SET": "full",
            }
        )
        server = make_server("127.0.0.1", 0, app, threaded=True, ssl_context=ssl_context)
        thread = threading.Thread(
            # A short poll interval makes shutdown() return at once.
            target=server.serve_forever,
            kwargs={"poll_interval": 0.02},
            name="sushy-emulator",
            daemon=True,
        )
        thread.start()
        yield RedfishBmc(
            address="127.0.0.1",
            port=server.server_port,
            username=USERNAME,
            password=PASSWORD,
            system=SYSTEM_ID,
            ca_path=cert_path,
            domain=domain,
            connection=connection,
        )
    finally:
        if server is not None:
            if thread is not None:
                server.shutdown()
                thread.join(10)
            server.server_close()
        if saved_wsgi is _MISSING:
            app.__dict__.pop("wsgi_app", None)
        else:
            app.wsgi_app = saved_wsgi
        app.config.clear()
        app.config.update(saved_config)
        _drop_memoized(app)
        _remove_domain(connection)
        connection.close()
