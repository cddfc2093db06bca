"""Run every bad-input case of tests/test_bad_inputs.py through the real CLI and print the markdown table.

    python benchmarks/bad_inputs_table.py [--docs] [--out table.md]

The table's home is docs/bad-inputs.md: ``--docs`` rewrites that file from the table's header row to its end
(the text above the table is kept), so the published table is exactly what this script printed.

The table (group | class | input | exit code | message) is generated from the case list: each row is what
qcompile actually printed and returned on this machine (for exit 0: the "wrote ..." line and the first
warnings). Below it, a summary says how many outcomes met their case's expectations (exit code, one message
line, no traceback, nothing left behind, a valid output for exit 0) and lists any that did not; the script then
exits 1. Paths in messages are shortened to DIR/ (the case's folder) and TMP (the folder around it).
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS_TABLE = REPO / "docs" / "bad-inputs.md"
TABLE_HEADER = "| group | class | input | exit code | message |"
logger = logging.getLogger("bad_inputs_table")


def _load_cases():
    spec = importlib.util.spec_from_file_location("bad_input_cases", REPO / "tests" / "test_bad_inputs.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ").strip()


def build_table() -> tuple[str, int]:
    cases = _load_cases()
    rows = [TABLE_HEADER, "|---|---|---|---|---|"]
    failures: list[str] = []
    for index, case in enumerate(cases.CASES, 1):
        with tempfile.TemporaryDirectory(prefix="qcompile-bad-") as tmp:
            folder = Path(tmp)
            outcome = cases.run_case(case, folder)
            try:
                cases.assert_outcome(case, outcome, folder)
            except AssertionError as exc:
                failures.append(f"- {case.name}: {str(exc).splitlines()[0][:200]}")
            message = (outcome.line.replace(str(folder / "case") + "/", "DIR/").replace(str(folder / "case"), "DIR")
                       .replace(str(folder), "TMP"))
        rows.append(f"| {case.group} | {_cell(case.name)} | {_cell(case.input)} | {outcome.exit_code} | "
                    f"`{_cell(message)}` |")
        logger.info("%d/%d %s: exit %d in %.1fs", index, len(cases.CASES), case.name, outcome.exit_code,
                    outcome.seconds)
    classes = len(cases.CASES)
    groups = len({c.group for c in cases.CASES})
    errors = sum(1 for c in cases.CASES if c.exit_code != 0)
    summary = (f"\n{classes} bad-input classes in {groups} groups ({errors} errors, {classes - errors} defined "
               f"results with exit 0): {classes - len(failures)} behaved as expected (exit code, one message line, "
               f"no traceback, nothing left behind, valid output for exit 0), {len(failures)} did not.\n")
    return "\n".join(rows) + "\n" + summary + "".join(f"{line}\n" for line in failures), len(failures)


def write_docs_table(table: str, path: Path = DOCS_TABLE) -> None:
    """Replace the table (header row to end of file) in ``path``, keeping the prose above it."""
    text = path.read_text(encoding="utf-8")
    start = text.find(TABLE_HEADER)
    if start < 0:
        raise SystemExit(f"{path}: no line {TABLE_HEADER!r} to replace")
    path.write_text(text[:start] + table, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", action="store_true", help=f"also rewrite the table in {DOCS_TABLE.relative_to(REPO)}")
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    table, failures = build_table()
    sys.stdout.write(table)
    if args.docs:
        write_docs_table(table)
    if args.out:
        args.out.write_text(table, encoding="utf-8")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
