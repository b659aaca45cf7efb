"""``python -m ideaforge.cli``: the same as the ``ideaforge`` command."""

from ideaforge.cli.commands import main

main()
