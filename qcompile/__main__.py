"""`python -m qcompile ...` is the same as the `qcompile` console script."""

from qcompile.cli import main

main()
