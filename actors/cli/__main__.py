"""``python -m actors.cli``: the ``staffwork`` command."""

from actors.cli import main

main()
