"""``python -m cloudha`` is the ``cloudha`` command."""

from cloudha.cli import main

main(prog_name="cloudha")
