"""``python -m broker`` is the ``cairn`` command."""

from broker.cli import main

main()
