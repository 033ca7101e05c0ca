"""The ``cairn`` command line: the top-level group (``main``), its command groups, the demo."""
