"""``python -m ebmrun`` = the ``ebmrun`` console script."""

from ebmrun.cli import main

main()
