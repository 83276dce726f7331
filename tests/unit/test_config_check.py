"""``cloudha config check``: one line per problem and exit 2; a summary and exit 0; no secret shown.

The credential tries run here on libvirt's in-process test driver
(``test:///default``) and the fake power driver; against a real sshd,
libvirtd and fake BMC in tests/integration/test_config_credentials.py.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from cloudha.cli import main
from cloudha.credentials import check_credentials
from cloudha.inventory import load_inventory
from cloudha.testing import FakeBmc, FakePowerDriver

PASSWORD = "Very-s3cret-BMC"

INVENTORY = """
[server]
id = "ms1"

[defaults]
cluster = "c1"
agent = "local"
libvirt_uri = "test:///default"
oobm = { driver = "ipmitool", username = "admin", password_env = "CFG_TEST_BMC_PW" }

[[hosts]]
id = "h1"
address = "127.0.0.11"
oobm = { address = "10.0.1.1" }

[[hosts]]
id = "h2"
address = "127.0.0.12"
"""


def write(tmp_path: Path, text: str = INVENTORY) -> Path:
    path = tmp_path / "cluster.toml"
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CFG_TEST_BMC_PW", PASSWORD)


def run(*argv: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["config", "check", *argv])
    assert isinstance(result.exception, SystemExit | None), result.exception
    assert "Traceback" not in result.stdout + result.stderr
    assert PASSWORD not in result.stdout + result.stderr
    return result.exit_code, result.stdout, result.stderr


def test_a_good_inventory_is_one_line_and_exit_0(tmp_path: Path) -> None:
    status, out, err = run(str(write(tmp_path)))
    assert (status, err) == (0, "")
    assert out == "2 hosts in 1 cluster, 0 pools, 1 BMC: OK\n"


def test_a_bad_inventory_is_one_line_per_problem_and_exit_2(tmp_path: Path) -> None:
    text = INVENTORY.replace('id = "h2"', 'id = "h2"\nrakc = "r1"').replace(
        'address = "10.0.1.1"', 'address = "10.0.1.1", driver = "ipmitol"'
    )
    path = write(tmp_path, text)
    status, out, err = run(str(path))
    assert status == 2
    assert out.splitlines() == [
        f"{path}:13: hosts[h1].oobm.driver: unknown driver 'ipmitol' (did you mean 'ipmitool'?)"
        " (drivers: ipmitool, ipmi, redfish)",
        f"{path}:17: hosts[h2].rakc: unknown key (did you mean 'rack'?)",
    ]
    assert err == f"cloudha config check: {path}: 2 problems\n"


def test_a_missing_password_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CFG_TEST_BMC_PW")
    path = write(tmp_path)
    status, out, _err = run(str(path))
    assert status == 2
    assert out == (
        f"{path}:8: defaults.oobm.password_env: environment variable CFG_TEST_BMC_PW is not set\n"
    )


def test_a_password_written_in_the_inventory_is_refused_unshown(tmp_path: Path) -> None:
    text = INVENTORY.replace(
        'address = "10.0.1.1"', f'address = "10.0.1.1", password = "{PASSWORD}"'
    )
    status, out, _err = run(str(write(tmp_path, text)))
    assert status == 2
    assert "password_env or password_file" in out


def test_json_shows_where_secrets_come_from_never_their_values(tmp_path: Path) -> None:
    status, out, _err = run(str(write(tmp_path)), "--json")
    assert status == 0
    document = json.loads(out)
    assert document["ok"] is True
    assert document["problems"] == []
    assert [h["id"] for h in document["hosts"]] == ["h1", "h2"]
    assert document["hosts"][0]["oobm"]["password"] == "env CFG_TEST_BMC_PW"
    assert document["hosts"][1]["oobm"] is None


def test_json_of_a_bad_inventory_lists_the_problems(tmp_path: Path) -> None:
    status, out, err = run(
        str(write(tmp_path, INVENTORY.replace("[[hosts]]", "[[hostz]]", 1))), "--json"
    )
    assert status == 2
    document = json.loads(out)
    assert document["ok"] is False
    assert [p["key"] for p in document["problems"]] == ["hostz"]
    assert document["problems"][0]["line"] == 10
    assert "1 problem" in err


def test_credentials_tried_and_reported(tmp_path: Path) -> None:
    inventory = load_inventory(write(tmp_path))
    driver = FakePowerDriver("ipmitool")
    driver.add("10.0.1.1", FakeBmc(password=PASSWORD))
    checks = check_credentials(inventory, timeout=5.0, drivers={"ipmitool": driver})
    shown = [(c.host_id, c.part, c.ok) for c in checks]
    assert shown == [
        ("h1", "ssh", None),  # agent = "local"
        ("h1", "libvirt", True),
        ("h1", "bmc", True),
        ("h2", "ssh", None),
        ("h2", "libvirt", True),
        ("h2", "bmc", None),  # no BMC
    ]
    assert checks[2].detail == "ipmitool://admin@10.0.1.1: power on"
    assert "libvirt" in checks[1].detail


def test_a_refused_password_fails_without_showing_it(tmp_path: Path) -> None:
    inventory = load_inventory(write(tmp_path))
    driver = FakePowerDriver("ipmitool")
    driver.add("10.0.1.1", FakeBmc(password="another"))
    (bmc,) = [
        c
        for c in check_credentials(inventory, timeout=5.0, drivers={"ipmitool": driver})
        if c.part == "bmc" and c.ok is not None
    ]
    assert bmc.ok is False
    assert "refused" in bmc.detail
    assert PASSWORD not in bmc.detail


def test_test_credentials_exits_1_when_a_try_fails(tmp_path: Path) -> None:
    # No BMC answers at 127.0.0.1:1: the try fails, within the timeout.
    text = INVENTORY.replace('address = "10.0.1.1"', 'address = "127.0.0.1", port = 1')
    status, out, err = run(str(write(tmp_path, text)), "--test-credentials", "--timeout", "2")
    assert status == 1
    assert "FAILED" in out
    assert err.startswith("cloudha config check: ")
    assert len(err.splitlines()) == 1
