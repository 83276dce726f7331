"""Adapters that reach hosts directly: SSH (paramiko) and libvirt.

Import the submodules (:mod:`cloudha.transport.ssh`,
:mod:`cloudha.transport.libvirt`); they need the ``ssh`` and ``libvirt``
extras, which ``import cloudha`` does not.
"""
