"""``python -m broker`` is the ``cairn`` command."""

from broker.cli.main import main

main()
