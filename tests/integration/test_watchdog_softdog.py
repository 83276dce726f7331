"""The Linux watchdog adapter against the kernel's softdog, where the kernel allows it.

Safety first: this machine must never be rebooted by the test. softdog is
used only with ``soft_noboot=1`` (an expiry logs instead of rebooting) and
``nowayout=0`` (the magic close stops it): the module's parameter list is
read with ``modinfo`` before loading it, and an already loaded softdog is
used only if ``/sys/module/softdog/parameters`` shows both. Only a device
whose sysfs identity is softdog's is opened (never a hardware watchdog).
Anything that cannot be guaranteed skips the test, with the exact reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloudha.heartbeat import LinuxWatchdog

PARAMETERS = Path("/sys/module/softdog/parameters")
CLASS = Path("/sys/class/watchdog")
IDENTITY = "Software Watchdog"


def _read(path: Path) -> str:
    return path.read_text(encoding="ascii").strip()


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)


def _safe_loaded() -> str | None:
    """Why an already present softdog may not be used, or None when it is safe."""
    try:
        noboot = _read(PARAMETERS / "soft_noboot")
        nowayout = _read(PARAMETERS / "nowayout")
    except OSError as exc:
        return f"softdog is present but its parameters cannot be read: {exc}"
    if noboot not in ("1", "Y"):
        return f"softdog is loaded with soft_noboot={noboot}: opening it could reboot this machine"
    if nowayout not in ("0", "N"):
        return f"softdog is loaded with nowayout={nowayout}: it could not be stopped"
    return None


def _load() -> str | None:
    """Load softdog so that it cannot reboot this machine; why not, or None when loaded."""
    modules = Path("/lib/modules") / os.uname().release
    if not modules.is_dir():
        return f"softdog module absent: no {modules} (not built in, no loadable modules)"
    for tool in ("modinfo", "modprobe"):
        if shutil.which(tool) is None:
            return f"softdog module absent: no {tool} on this machine"
    info = _run("modinfo", "-p", "softdog")
    if info.returncode != 0:
        return f"softdog module absent: modinfo -p softdog: {info.stderr.strip()}"
    names = {line.split(":", 1)[0].strip() for line in info.stdout.splitlines()}
    if not {"soft_noboot", "nowayout", "soft_margin"} <= names:
        return f"softdog lacks soft_noboot/nowayout (has {sorted(names)}): not loading it"
    loaded = _run("modprobe", "softdog", "soft_noboot=1", "nowayout=0", "soft_margin=60")
    if loaded.returncode != 0:
        return f"softdog module unloadable: modprobe softdog: {loaded.stderr.strip()}"
    return _safe_loaded()


def _device() -> tuple[Path, Path] | None:
    """softdog's /dev/watchdogN and its sysfs directory."""
    if not CLASS.is_dir():
        return None
    for entry in sorted(CLASS.iterdir()):
        try:
            if _read(entry / "identity") == IDENTITY:
                return Path("/dev") / entry.name, entry
        except OSError:
            continue
    return None


@pytest.fixture
def softdog() -> Iterator[tuple[Path, Path]]:
    we_loaded = False
    if PARAMETERS.parent.is_dir():
        why = _safe_loaded()
    else:
        why = _load()
        we_loaded = why is None
    if why is not None:
        pytest.skip(why)
    try:
        found = _device()
        if found is None:
            pytest.skip(f"softdog is loaded but no {CLASS}/*/identity says {IDENTITY!r}")
        yield found
    finally:
        if we_loaded:
            _run("modprobe", "-r", "softdog")


def test_softdog_armed_petted_and_disarmed_with_the_magic_close(
    softdog: tuple[Path, Path],
) -> None:
    device, sysfs = softdog
    dog = LinuxWatchdog(str(device))
    assert dog.arm(5) == 5.0  # WDIOC_SETTIMEOUT, read back with WDIOC_GETTIMEOUT
    try:
        if (sysfs / "state").exists():
            assert _read(sysfs / "state") == "active"
        if (sysfs / "timeout").exists():
            assert _read(sysfs / "timeout") == "5"
        for _ in range(3):
            time.sleep(1.0)
            dog.keepalive()
        if (sysfs / "timeleft").exists():
            assert int(_read(sysfs / "timeleft")) >= 3
    finally:
        dog.close(disarm=True)
    if (sysfs / "state").exists():
        assert _read(sysfs / "state") == "inactive"
