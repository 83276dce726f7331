"""A lab of real processes on loopback: hosts with a libvirtd, a heartbeat writer and a BMC.

:class:`~cloudha.testing.lab.cluster.Lab` starts N "hosts" on 127.0.0.1, each
a real libvirtd hosting the test driver with a few domains, a real
``cloudha heartbeat write`` on a shared directory (standing in for the NFS
pool), a fake BMC over real IPMI whose power-off kills that host's
processes, and optionally an sshd (the host's agent side). ``cloudha demo
--real`` and the integration tests run on it. The harness modules
(:mod:`~cloudha.testing.lab.libvirtd`, :mod:`~cloudha.testing.lab.fakebmc`,
:mod:`~cloudha.testing.lab.sshd`) are usable on their own.

Needs the ``libvirt`` and ``ipmi`` extras (and ``ssh`` for sshd hosts) and
Debian's ``libvirt-daemon`` (``bash scripts/setup.sh test``). Not imported
by ``import cloudha.testing``.
"""

from cloudha.testing.lab.processes import LabError as LabError
