"""The built-in power drivers, built from settings.

``default_power_drivers(settings)`` returns the drivers whose dependencies
are installed: ``ipmitool`` (the ipmitool program; always built, it fails
per call with a clear error when the program is missing), ``ipmi`` (pyghmi,
``pip install 'cloudha[ipmi]'``) and ``redfish`` (sushy, ``pip install
'cloudha[redfish]'``). A driver whose extra is not installed is left out
(logged at INFO); a host configured for it then gets a
:class:`~cloudha.errors.ConfigurationError` naming the host, the driver and
the drivers available.
"""

from __future__ import annotations

import logging
import os

from cloudha.errors import MissingExtraError
from cloudha.oobm.ipmi import PyghmiDriver
from cloudha.oobm.ipmitool import IpmitoolDriver
from cloudha.oobm.power import PowerDriver
from cloudha.oobm.redfish import RedfishDriver
from cloudha.settings import Settings

__all__ = ["default_power_drivers"]

log = logging.getLogger(__name__)


def default_power_drivers(
    settings: Settings | None = None,
    *,
    redfish_ca_bundle: str | os.PathLike[str] | None = None,
) -> list[PowerDriver]:
    """ipmitool, pyghmi and Redfish drivers configured by ``settings``.

    Args:
        settings: ``outofbandmanagement.ipmitool.*`` and ``redfish.*``.
        redfish_ca_bundle: CA certificates that sign the BMCs' TLS
            certificates (default: the system store); ignored when
            ``redfish.ignore.ssl`` is true.
    """
    settings = settings if settings is not None else Settings()
    drivers: list[PowerDriver] = [IpmitoolDriver.from_settings(settings)]
    try:
        drivers.append(PyghmiDriver())
    except MissingExtraError as exc:
        log.info("IPMI driver 'ipmi' not available: %s", exc)
    try:
        drivers.append(RedfishDriver.from_settings(settings, ca_bundle=redfish_ca_bundle))
    except MissingExtraError as exc:
        log.info("Redfish driver not available: %s", exc)
    return drivers
