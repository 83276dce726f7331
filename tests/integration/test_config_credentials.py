"""``cloudha config check --test-credentials`` on a real sshd, libvirtd and fake BMC (loopback).

One inventory whose host has the right key, URI and BMC password: every try
works, exit 0. The same host with a wrong SSH key, a libvirt URI where
nothing listens and a wrong BMC password: each try fails and says why, exit
1, and the passwords are never shown.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cloudha.cli import main
from tests.integration import fakebmc
from tests.integration.fakebmc import FakeBmcServer
from tests.integration.libvirtd import LibvirtServer, free_port, libvirtd_server  # noqa: F401
from tests.integration.sshd import SshServer, sshd_server  # noqa: F401

pytestmark = pytest.mark.integration

fake_bmc = fakebmc.fake_bmc
WRONG_PASSWORD = "Wrong-pw-9k3m0x3"  # the fake BMC's password's length: refused as wrong, not long


def inventory(
    path: Path, ssh: SshServer, uri: str, bmc: FakeBmcServer, *, key: Path, password: str
) -> Path:
    secret = path.with_name(f"{path.stem}.bmc-password")
    secret.write_text(password + "\n")
    os.chmod(secret, 0o600)
    path.write_text(
        "\n".join(
            [
                "[server]",
                'id = "ms1"',
                "[[hosts]]",
                'id = "h1"',
                f'address = "{ssh.address}"',
                'cluster = "c1"',
                f'libvirt_uri = "{uri}"',
                f'ssh = {{ user = "{ssh.username}", port = {ssh.port}, key = "{key}",'
                f' known_hosts = "{ssh.known_hosts}" }}',
                f'oobm = {{ driver = "ipmitool", address = "{bmc.address}", port = {bmc.port},'
                f' username = "{bmc.username}", password_file = "{secret}" }}',
                "",
            ]
        )
    )
    return path


def check(path: Path) -> tuple[int, dict[str, Any], str]:
    result = CliRunner().invoke(
        main, ["config", "check", str(path), "--test-credentials", "--timeout", "10", "--json"]
    )
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, json.loads(result.stdout), result.stderr


def test_good_credentials_all_work(
    tmp_path: Path,
    sshd_server: SshServer,  # noqa: F811
    libvirtd_server: LibvirtServer,  # noqa: F811
    fake_bmc: FakeBmcServer,
) -> None:
    path = inventory(
        tmp_path / "good.toml",
        sshd_server,
        libvirtd_server.uri,
        fake_bmc,
        key=sshd_server.client_key,
        password=fake_bmc.password,
    )
    status, document, err = check(path)
    assert (status, err) == (0, ""), document
    tries = {c["part"]: c for c in document["credentials"]}
    assert {part: c["ok"] for part, c in tries.items()} == {
        "ssh": True,
        "libvirt": True,
        "bmc": True,
    }
    assert "host key verified" in tries["ssh"]["detail"]
    assert "libvirt" in tries["libvirt"]["detail"]
    assert tries["bmc"]["detail"].endswith("power on")
    assert fake_bmc.history() == []  # a status read, nothing else
    assert fake_bmc.password not in json.dumps(document)


def test_wrong_credentials_each_fail_and_say_why(
    tmp_path: Path,
    sshd_server: SshServer,  # noqa: F811
    fake_bmc: FakeBmcServer,
) -> None:
    wrong_key = tmp_path / "wrong_key"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(wrong_key)], check=True
    )
    assert len(WRONG_PASSWORD) == len(fake_bmc.password)
    path = inventory(
        tmp_path / "bad.toml",
        sshd_server,
        f"test+tcp://127.0.0.1:{free_port()}/default",  # nothing listens there
        fake_bmc,
        key=wrong_key,
        password=WRONG_PASSWORD,
    )
    status, document, err = check(path)
    assert status == 1, document
    assert err.startswith("cloudha config check: ")
    assert "3 credential check(s) FAILED" in err
    tries = {c["part"]: c for c in document["credentials"]}
    assert {part: c["ok"] for part, c in tries.items()} == {
        "ssh": False,
        "libvirt": False,
        "bmc": False,
    }
    assert "auth" in tries["ssh"]["detail"].lower()
    assert "HMAC is invalid" in tries["bmc"]["detail"]  # ipmitool's words for a wrong password
    shown = json.dumps(document) + err
    assert WRONG_PASSWORD not in shown
    assert fake_bmc.password not in shown
    assert fake_bmc.power_state() == "on"
