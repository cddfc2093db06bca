"""The command line: `qcompile` (main.py) with its compile (compile.py) and tool (tools.py) commands; flags are
declared in options.py and become a CompileConfig in build.py."""

from qcompile.cli.main import EXIT_INTERNAL_ERROR, EXIT_USER_ERROR, main

__all__ = ["main", "EXIT_USER_ERROR", "EXIT_INTERNAL_ERROR"]
