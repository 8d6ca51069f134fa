"""``python -m chatq``: the same as the ``chatq`` command."""

from chatq.cli import main

main()
