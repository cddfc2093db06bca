"""Coverage-guided fuzzing of compile_model with atheris (libFuzzer), run by hand; not part of the test suite.

    pip install atheris
    python benchmarks/fuzz_atheris.py -runs=5000 -max_len=4096       # any libFuzzer flags

The corpus starts from the two seed models of tests/test_fuzz.py, written into the corpus folder (the last
argument, or a temporary folder) when it is empty. Each mutation is either libFuzzer's own byte mutation or, for
inputs that still parse, one of tests/test_fuzz.py's structured proto mutations (wrong dtypes, dangling inputs,
bad attributes, ...) driven by libFuzzer's seed; qcompile's own modules are instrumented, so inputs that reach
new code in qcompile are kept. Each input is compiled with two calibration
items; a QCompileError is the expected outcome for a broken model, anything else is a crash that libFuzzer
reports with the input that caused it. Every 500 inputs the script logs how many ran and how they ended.
"""

from __future__ import annotations

import collections
import importlib.util
import logging
import random
import sys
import tempfile
from pathlib import Path

import atheris
import onnx

REPO = Path(__file__).resolve().parents[1]

with atheris.instrument_imports(include=["qcompile"]):
    import qcompile.api  # noqa: F401 - qcompile imports it lazily; instrument it and all it imports now
    from qcompile import CompileConfig, compile_model
    from qcompile.errors import QCompileError

_spec = importlib.util.spec_from_file_location("fuzz_seeds", REPO / "tests" / "test_fuzz.py")
_seeds = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = _seeds  # dataclasses look their module up there
_spec.loader.exec_module(_seeds)

FEEDS = _seeds.feeds_for(_seeds.mlp())
CONFIG = CompileConfig(fidelity_samples=1)
COUNTS: collections.Counter[str] = collections.Counter()


REPORT_EVERY = 500


def test_one_input(data: bytes) -> None:
    try:
        compile_model(data, FEEDS, CONFIG)
        COUNTS["ok"] += 1
    except QCompileError as exc:
        assert "\n" not in str(exc), repr(str(exc))
        COUNTS["error"] += 1
    total = sum(COUNTS.values())
    if total % REPORT_EVERY == 0:
        sys.stderr.write(f"qcompile: {total} inputs compiled: {dict(COUNTS)}\n")


def custom_mutator(data: bytes, max_size: int, seed: int) -> bytes:
    rng = random.Random(seed)
    if rng.random() < 0.5:
        return atheris.Mutate(data, max_size)
    try:
        model = onnx.load_from_string(data)
        _seeds._mutate(_seeds.RandomChoices(rng), model)
        out = model.SerializeToString()
    except Exception:  # noqa: BLE001 - unparsable input or a mutation protobuf refuses: mutate bytes instead
        return atheris.Mutate(data, max_size)
    return out if len(out) <= max_size else atheris.Mutate(data, max_size)


def main() -> None:
    logging.disable(logging.WARNING)  # qcompile's warnings on odd models would drown libFuzzer's status lines
    args = list(sys.argv)
    if len(args) < 2 or args[-1].startswith("-"):
        args.append(tempfile.mkdtemp(prefix="qcompile-atheris-"))
    corpus = Path(args[-1])
    if not any(corpus.iterdir()):
        for name, make in _seeds.SEEDS.items():
            (corpus / f"{name}.onnx").write_bytes(make().SerializeToString())
    atheris.Setup(args, test_one_input, custom_mutator=custom_mutator)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
