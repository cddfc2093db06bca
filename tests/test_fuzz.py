"""Fuzzing: mutated models, calibration data and flags never make qcompile raise anything but QCompileError.

Hypothesis mutates valid inputs and calls the real entry points:

- serialized model bytes (byte flips, overwrites, truncation, insertion, deletion, duplication) -> compile_model;
- the model proto through onnx's own API (wrong dtypes, dangling or cyclic inputs, bad attributes, huge or
  negative dims, unknown ops and domains, NaN/Inf weights, wrong opsets / IR versions, dropped or duplicated
  nodes, recursive local functions, hostile external-data references, wrong value_info) -> compile_model, from
  bytes and from a file in a folder;
- calibration data (dtypes, shapes, NaN/Inf, huge values, empty, missing/extra keys, non-array items,
  generators) -> compile_model;
- command lines (numbers, NaN, regexes, TOML recipes) -> the CLI through click's CliRunner.

Each example must end in a QCompileError with a one-line message, or in success with an output that passes
onnx.checker and loads in ONNX Runtime (the CLI: exit 0 or exit 2 with one ``error:`` line, no traceback and no
file left behind on failure). The default run is bounded and derandomized (250 examples, well under a minute
here); ``-m slow`` runs a 10x larger random search. Every run prints how many cases it tried, by outcome.
"""

from __future__ import annotations

import collections
import contextlib
import os
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from qcompile import CompileConfig, compile_model
from qcompile.errors import QCompileError

COUNTS: collections.Counter[str] = collections.Counter()

_COMMON = dict(deadline=None, suppress_health_check=list(HealthCheck), print_blob=True)
FAST = settings(max_examples=50, derandomize=True, **_COMMON)
SLOW = settings(max_examples=400, **_COMMON)
CONFIG = CompileConfig(fidelity_samples=1)


@pytest.fixture(scope="module", autouse=True)
def _report_counts(request):
    yield
    if not COUNTS:
        return
    by_test = collections.defaultdict(dict)
    for key, n in COUNTS.items():
        test, outcome = key.split(":")
        by_test[test][outcome] = n
    lines = [f"fuzz cases tried: {sum(COUNTS.values())}"] + [
        f"  {test}: {sum(v.values())} ({', '.join(f'{k} {n}' for k, n in sorted(v.items()))})"
        for test, v in sorted(by_test.items())]
    reporter = request.config.pluginmanager.getplugin("terminalreporter")
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        for line in lines:
            (reporter.write_line if reporter else print)(line)


# ------------------------------------------------------------------------------------------------ seeds


def _model(nodes, inputs, outputs, inits, opset: int = 17) -> onnx.ModelProto:
    model = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, inits),
                              opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def mlp() -> onnx.ModelProto:
    """x [batch, 8] -> MatMul -> Relu -> MatMul(+Add) -> Relu -> MatMul -> y [batch, 4]."""
    rng = np.random.default_rng(0)
    w = lambda name, *shape: numpy_helper.from_array((rng.standard_normal(shape) / 3).astype(np.float32), name)
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["h0"], name="fc0"),
             helper.make_node("Relu", ["h0"], ["r0"], name="relu0"),
             helper.make_node("MatMul", ["r0", "w1"], ["h1"], name="fc1"),
             helper.make_node("Add", ["h1", "b1"], ["a1"], name="add1"),
             helper.make_node("Relu", ["a1"], ["r1"], name="relu1"),
             helper.make_node("MatMul", ["r1", "w2"], ["y"], name="fc2")]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
                  [w("w0", 8, 8), w("w1", 8, 8), w("b1", 8), w("w2", 8, 4)])


def convnet() -> onnx.ModelProto:
    """x [batch, 3, 8, 8] -> Conv -> Relu -> Conv (+ residual) -> GlobalAveragePool -> Flatten -> Gemm -> y."""
    rng = np.random.default_rng(1)
    w = lambda name, *shape: numpy_helper.from_array((rng.standard_normal(shape) / 3).astype(np.float32), name)
    nodes = [helper.make_node("Conv", ["x", "c0", "cb0"], ["h0"], name="conv0", kernel_shape=[3, 3], pads=[1] * 4),
             helper.make_node("Relu", ["h0"], ["r0"], name="relu0"),
             helper.make_node("Conv", ["r0", "c1"], ["h1"], name="conv1", kernel_shape=[3, 3], pads=[1] * 4),
             helper.make_node("Add", ["h1", "r0"], ["s"], name="residual"),
             helper.make_node("GlobalAveragePool", ["s"], ["p"], name="gap"),
             helper.make_node("Flatten", ["p"], ["f"], name="flatten", axis=1),
             helper.make_node("Gemm", ["f", "g", "gb"], ["y"], name="gemm", transB=1)]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 5])],
                  [w("c0", 4, 3, 3, 3), w("cb0", 4), w("c1", 4, 4, 3, 3), w("g", 5, 4), w("gb", 5)])


SEEDS = {"mlp": mlp, "convnet": convnet}


def feeds_for(model: onnx.ModelProto, n: int = 2) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(2)
    shape = [d.dim_value or 2 for d in model.graph.input[0].type.tensor_type.shape.dim]
    return [{model.graph.input[0].name: rng.standard_normal(shape).astype(np.float32)} for _ in range(n)]


# ------------------------------------------------------------------------------------------------ the oracle


def _check(test: str, run) -> None:
    """Run ``run()``: a QCompileError (one line) or a valid model pass; anything else fails the test."""
    try:
        result = run()
    except QCompileError as exc:
        message = str(exc)
        assert message and "\n" not in message, repr(message)
        COUNTS[f"{test}:error"] += 1
        return
    model = result.model
    onnx.checker.check_model(model)
    ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    COUNTS[f"{test}:ok"] += 1


def _compile(source, calib):
    return lambda: compile_model(source, calib, CONFIG)


# ------------------------------------------------------------------------------------------------ byte mutations


@st.composite
def byte_mutations(draw) -> bytes:
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))]().SerializeToString())
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete", "duplicate"]))
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set":
            data[i] = draw(st.sampled_from([0x00, 0x01, 0x7F, 0x80, 0xFF, draw(st.integers(0, 255))]))
        elif kind == "truncate":
            del data[i:]
        elif kind == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[i:i + draw(st.integers(1, 16))]
        else:
            j = min(len(data), i + draw(st.integers(1, 64)))
            data[j:j] = data[i:j]
    return bytes(data)


def _byte_case(data: bytes) -> None:
    _check("bytes", _compile(data, feeds_for(mlp())))


@FAST
@given(byte_mutations())
def test_byte_mutations(data):
    _byte_case(data)


@pytest.mark.slow
@SLOW
@given(byte_mutations())
def test_byte_mutations_slow(data):
    _byte_case(data)


# ------------------------------------------------------------------------------------------------ proto mutations

DTYPES = list(range(0, 24))
DIMS = [-1, 0, 1, 2, 3, 4, 8, 2**31, 2**62]
OPS = ["Relu", "Conv", "MatMul", "Gemm", "Add", "Mul", "Softmax", "Transpose", "Identity", "Reshape", "Flatten",
       "Sigmoid", "LayerNormalization", "ConvTranspose", "MaxPool", "GlobalAveragePool", "FooBar", ""]
ATTR_NAMES = ["axis", "alpha", "perm", "kernel_shape", "pads", "strides", "transA", "transB", "group", "dilations",
              "auto_pad", "epsilon", "foo", ""]
EXTERNAL_LOCATIONS = ["w.bin", "../w.bin", "/etc/passwd", "..\\..\\x", "*/_ORT_MEM_ADDR_/*", "", "sub/../../w.bin",
                      "w.bin\x00x", "C:\\w.bin", "."]


class Choices(Protocol):
    """Where the mutations get their decisions: hypothesis here, a seeded RNG in benchmarks/fuzz_atheris.py."""

    def pick(self, options: Sequence): ...

    def integer(self, low: int, high: int) -> int: ...

    def flag(self) -> bool: ...

    def some(self, options: Sequence, max_size: int) -> list: ...


@dataclass(frozen=True)
class DrawChoices:
    draw: Callable

    def pick(self, options: Sequence):
        return self.draw(st.sampled_from(list(options)))

    def integer(self, low: int, high: int) -> int:
        return self.draw(st.integers(low, high))

    def flag(self) -> bool:
        return self.draw(st.booleans())

    def some(self, options: Sequence, max_size: int) -> list:
        return self.draw(st.lists(st.sampled_from(list(options)), max_size=max_size))


@dataclass(frozen=True)
class RandomChoices:
    rng: random.Random

    def pick(self, options: Sequence):
        return self.rng.choice(list(options))

    def integer(self, low: int, high: int) -> int:
        return self.rng.randint(low, high)

    def flag(self) -> bool:
        return self.rng.random() < 0.5

    def some(self, options: Sequence, max_size: int) -> list:
        return [self.rng.choice(list(options)) for _ in range(self.rng.randint(0, max_size))]


def _names(model: onnx.ModelProto) -> list[str]:
    g = model.graph
    return sorted({v.name for v in g.input} | {t.name for t in g.initializer}
                  | {o for n in g.node for o in n.output} | {"", "nope"})


def _attribute(c: Choices, name: str) -> onnx.AttributeProto:
    kind = c.pick(["int", "ints", "float", "string", "tensor", "graph"])
    if kind == "int":
        value = c.integer(-3, 3)
    elif kind == "ints":
        value = c.some(range(-3, 4), 6)
    elif kind == "float":
        value = c.pick([0.0, -1.0, 1e-5, float("nan"), float("inf"), 3.0])
    elif kind == "string":
        value = c.pick(["", "SAME_UPPER", "VALID", "NOTSET", "x"])
    elif kind == "tensor":
        value = numpy_helper.from_array(np.array([1.0, np.nan], np.float32))
    else:
        value = helper.make_graph([helper.make_node("Identity", ["x"], ["o"])], "sub", [],
                                  [helper.make_tensor_value_info("o", TensorProto.FLOAT, None)])
    return helper.make_attribute(name, value) if not (kind == "ints" and not value) else \
        helper.make_attribute(name, [], attr_type=onnx.AttributeProto.INTS)


def _mutate(c: Choices, model: onnx.ModelProto) -> str:
    """Apply one chosen mutation to model in place; return its name."""
    g = model.graph
    kind = c.pick([
        "input_dtype", "output_dtype", "init_dtype", "init_dims", "init_values", "input_dims", "node_input",
        "node_output", "op_type", "attribute", "drop_node", "duplicate_node", "reverse_nodes", "opset", "ir",
        "drop_init", "rename_output", "domain", "function", "value_info", "clear_field", "sparse_init",
        "external"])
    node = g.node[c.integer(0, len(g.node) - 1)] if len(g.node) else None
    init = g.initializer[c.integer(0, len(g.initializer) - 1)] if len(g.initializer) else None
    if kind == "input_dtype" and len(g.input):
        g.input[0].type.tensor_type.elem_type = c.pick(DTYPES)
    elif kind == "output_dtype" and len(g.output):
        g.output[0].type.tensor_type.elem_type = c.pick(DTYPES)
    elif kind == "init_dtype" and init is not None:
        init.data_type = c.pick(DTYPES)
    elif kind == "init_dims" and init is not None:
        init.dims[:] = c.some(DIMS, 4)
    elif (kind == "init_values" and init is not None and init.data_type == TensorProto.FLOAT
          and not init.external_data and init.data_location != TensorProto.EXTERNAL):
        value = c.pick([np.nan, np.inf, -np.inf, 3e38, 0.0, 1e-45, -1e30])
        try:
            array = numpy_helper.to_array(init).copy()
        except (ValueError, TypeError):   # an earlier mutation already broke this tensor's dims or type
            return kind
        array.flat[c.integer(0, max(array.size - 1, 0))] = value if array.size else 0
        if c.flag():
            array[...] = value
        init.CopyFrom(numpy_helper.from_array(array.astype(np.float32), init.name))
    elif kind == "input_dims" and len(g.input):
        dims = g.input[0].type.tensor_type.shape.dim
        if len(dims):
            dim = dims[c.integer(0, len(dims) - 1)]
            if c.flag():
                dim.dim_value = c.pick(DIMS)
            else:
                dim.dim_param = c.pick(["", "batch", "N", "1"])
    elif kind == "node_input" and node is not None and len(node.input):
        node.input[c.integer(0, len(node.input) - 1)] = c.pick(_names(model))
    elif kind == "node_output" and node is not None and len(node.output):
        node.output[0] = c.pick(_names(model) + ["fresh"])
    elif kind == "op_type" and node is not None:
        node.op_type = c.pick(OPS)
    elif kind == "attribute" and node is not None:
        name = c.pick(ATTR_NAMES)
        kept = [a for a in node.attribute if a.name != name]
        del node.attribute[:]
        node.attribute.extend(kept + [_attribute(c, name)])
    elif kind == "drop_node" and node is not None:
        g.node.remove(node)
    elif kind == "duplicate_node" and node is not None:
        g.node.append(onnx.NodeProto())
        g.node[-1].CopyFrom(node)
    elif kind == "reverse_nodes":
        nodes = [onnx.NodeProto() for _ in g.node]
        for dst, src in zip(nodes, reversed(g.node)):
            dst.CopyFrom(src)
        del g.node[:]
        g.node.extend(nodes)
    elif kind == "opset":
        model.opset_import[0].version = c.pick([1, 7, 9, 10, 11, 12, 13, 17, 21, 22, 25, 30, 99])
    elif kind == "ir":
        model.ir_version = c.pick([0, 1, 3, 4, 7, 8, 10, 11, 12, 99])
    elif kind == "drop_init" and init is not None:
        g.initializer.remove(init)
    elif kind == "rename_output" and len(g.output):
        g.output[0].name = c.pick(_names(model))
    elif kind == "domain" and node is not None:
        node.domain = c.pick(["com.microsoft", "ai.onnx.ml", "custom", "ai.onnx", "local"])
        if c.flag():
            model.opset_import.append(helper.make_opsetid(node.domain, c.pick([1, 3, 99])))
    elif kind == "function" and node is not None:
        callee = c.pick(["F", "G", "Relu"])
        body = helper.make_node(callee, ["a"], ["b"], domain="local" if callee != "Relu" else "")
        model.functions.append(helper.make_function("local", "F", ["a"], ["b"], [body], [helper.make_opsetid("", 17)]))
        model.opset_import.append(helper.make_opsetid("local", 1))
        node.op_type, node.domain = "F", "local"
    elif kind == "value_info":
        name = c.pick(_names(model))
        shape = None if c.flag() else c.some(DIMS[:7], 4)
        g.value_info.append(helper.make_tensor_value_info(name, c.pick(DTYPES[1:17]), shape))
    elif kind == "clear_field":
        g.ClearField(c.pick(["input", "output", "initializer", "node", "value_info"]))
    elif kind == "sparse_init":
        values = numpy_helper.from_array(np.ones(2, np.float32), c.pick(_names(model) + ["sp"]))
        indices = numpy_helper.from_array(np.array(c.pick([[0, 1], [5, 99], [-1, 0]]), np.int64))
        g.sparse_initializer.append(helper.make_sparse_tensor(values, indices, [c.pick([2, 4, 0])]))
    elif kind == "external" and init is not None:
        init.ClearField("raw_data")
        init.data_location = TensorProto.EXTERNAL
        entries = [("location", c.pick(EXTERNAL_LOCATIONS)),
                   ("offset", c.pick(["0", "-1", "4", "99999999999", "x", " 0"])),
                   ("length", c.pick(["0", "16", "256", str(2**63), "-4"]))]
        for key, value in entries[: c.integer(0, 3)]:
            entry = init.external_data.add()
            entry.key, entry.value = key, value
    return kind


@st.composite
def proto_mutations(draw) -> tuple[str, onnx.ModelProto, list[str]]:
    seed = draw(st.sampled_from(sorted(SEEDS)))
    model = SEEDS[seed]()
    kinds = [_mutate(DrawChoices(draw), model) for _ in range(draw(st.integers(1, 3)))]
    return seed, model, kinds


def _proto_case(case, from_file: bool) -> None:
    seed, model, kinds = case
    feeds = feeds_for(SEEDS[seed]())
    try:
        data = model.SerializeToString()
    except Exception:  # noqa: BLE001 - protobuf refuses some mutations (e.g. NUL in a string); nothing to test
        COUNTS["proto:unserializable"] += 1
        return
    if not from_file:
        _check("proto", _compile(data, feeds))
        return
    with tempfile.TemporaryDirectory(prefix="qcompile-fuzz-") as tmp:
        folder = Path(tmp)
        (folder / "w.bin").write_bytes(np.ones(64, np.float32).tobytes())
        (folder / "model.onnx").write_bytes(data)
        _check("proto_file", _compile(folder / "model.onnx", feeds))


@FAST
@given(proto_mutations())
def test_proto_mutations(case):
    _proto_case(case, from_file=False)


@FAST
@given(proto_mutations())
def test_proto_mutations_from_a_file(case):
    _proto_case(case, from_file=True)


@pytest.mark.slow
@SLOW
@given(proto_mutations(), st.booleans())
def test_proto_mutations_slow(case, from_file):
    _proto_case(case, from_file)


# ------------------------------------------------------------------------------------------------ data mutations

DATA_DTYPES = [np.float16, np.float32, np.float64, np.int8, np.int32, np.int64, np.uint8, np.bool_, np.complex64,
               object, str]
SHAPES = [(2, 8), (1, 8), (0, 8), (2,), (2, 8, 1), (3, 7), (), (2, 0), (5, 8)]
VALUES = ["normal", "nan", "inf", "huge", "zeros", "constant", "overflow64"]


def _array(draw) -> object:
    kind = draw(st.sampled_from(["array", "array", "array", "list", "ragged", "none", "string", "scalar"]))
    if kind == "list":
        return [[0.5] * 8] * 2
    if kind == "ragged":
        return [[0.5] * 8, [0.5] * 3]
    if kind == "none":
        return None
    if kind == "string":
        return "x"
    if kind == "scalar":
        return 1.5
    shape = draw(st.sampled_from(SHAPES))
    value = draw(st.sampled_from(VALUES))
    base = np.random.default_rng(draw(st.integers(0, 3))).standard_normal(shape)
    base = {"normal": base, "nan": np.where(base > 1, np.nan, base), "inf": np.where(base > 1, np.inf, base),
            "huge": base * 1e37, "zeros": np.zeros(shape), "constant": np.full(shape, 7.0),
            "overflow64": base * 1e300}[value]
    dtype = draw(st.sampled_from(DATA_DTYPES))
    if dtype is str:
        return np.full(shape, "a")
    with np.errstate(all="ignore"):
        return base.astype(dtype)


@st.composite
def data_mutations(draw):
    items = []
    for _ in range(draw(st.integers(0, 3))):
        shape = draw(st.sampled_from(["dict", "dict", "dict", "bare", "list", "none"]))
        if shape == "bare":
            items.append(_array(draw))
        elif shape == "list":
            items.append([_array(draw)])
        elif shape == "none":
            items.append(None)
        else:
            keys = draw(st.sampled_from([["x"], ["x"], ["x", "extra"], ["X"], [], [1]]))
            items.append({k: _array(draw) for k in keys})
    container = draw(st.sampled_from(["list", "tuple", "generator", "single"]))
    return container, items


def _data_case(case) -> None:
    container, items = case
    if container == "tuple":
        calib = tuple(items)
    elif container == "generator":
        calib = (item for item in items)
    elif container == "single" and items:
        calib = items[0]
    else:
        calib = items
    _check("data", _compile(mlp().SerializeToString(), calib))


@FAST
@given(data_mutations())
def test_data_mutations(case):
    _data_case(case)


@pytest.mark.slow
@SLOW
@given(data_mutations())
def test_data_mutations_slow(case):
    _data_case(case)


# ------------------------------------------------------------------------------------------------ command lines

_TEXT = st.text(alphabet=st.sampled_from(list("abcXYZ019.,-_()[]*+?^$\\/ \t\x00é")), max_size=12)
_NUMBER = st.one_of(st.integers(-3, 10**12).map(str), st.sampled_from(["nan", "inf", "-inf", "1e400", "0", "-0"]),
                    _TEXT)
_TOML_LINES = ["op_types = []", "op_types = [1]", 'op_types = "Conv"', "[activation]", "method = 'entropy'",
               "percentile = nan", "symmetric = 'yes'", "[calibration]", "num_samples = 0", "num_samples = 2",
               "memory_budget_mb = -1", "[[overrides]]", "pattern = '(('", "skip = true", "quantize_classifier = 1",
               "fidelity_samples = 1.5", "[weight]", "granularity = 'block'", "block_size = 0", "x = 1", "[[[", "="]


@st.composite
def command_lines(draw) -> tuple[list[str], str | None]:
    args: list[str] = []
    for _ in range(draw(st.integers(0, 4))):
        flag = draw(st.sampled_from(["--num-samples", "--batch-size", "--percentile", "--method", "--image-size",
                                     "--mean", "--std", "--exclude", "--op-types", "--fidelity-samples", "--target",
                                     "--layout"]))
        value = draw(_NUMBER if flag in ("--num-samples", "--batch-size", "--percentile", "--fidelity-samples")
                     else st.one_of(_TEXT, st.sampled_from(["percentile", "entropy", "mse", "cpu", "nhwc", "fc0",
                                                            "MatMul", "Gemm,Conv", "fc.*", "0.5,0.5"])))
        args += [flag, value]
    recipe = "\n".join(draw(st.lists(st.sampled_from(_TOML_LINES), max_size=5))) if draw(st.booleans()) else None
    return args, recipe


def _cli_case(case) -> None:
    from click.testing import CliRunner

    from qcompile.cli import main
    args, recipe = case
    if any("\x00" in a for a in args):
        COUNTS["cli:nul_argument"] += 1  # an OS command line cannot hold NUL; click would not see it
        return
    with tempfile.TemporaryDirectory(prefix="qcompile-fuzz-") as tmp:
        root = Path(tmp)
        (root / "model.onnx").write_bytes(mlp().SerializeToString())
        (root / "calib").mkdir()
        for i, feed in enumerate(feeds_for(mlp())):
            np.savez(root / "calib" / f"s{i}.npz", **feed)
        extra = []
        if recipe is not None:
            (root / "recipe.toml").write_text(recipe, encoding="utf-8")
            extra = ["--config", str(root / "recipe.toml")]
        before = sorted(os.listdir(root))
        result = CliRunner().invoke(main, [str(root / "model.onnx"), "--calib", str(root / "calib"), "--no-progress",
                                           *extra, *args], prog_name="qcompile")
        text = result.stdout + result.stderr
        assert "Traceback" not in text and "internal error" not in text, (args, recipe, text)
        assert result.exit_code in (0, 2), (args, recipe, result.exit_code, text, result.exception)
        if result.exit_code == 2:
            lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
            assert lines and lines[-1].startswith(("error: ", "Error: ")), text
            assert sum(ln.startswith("error: ") for ln in lines) <= 1, text
            assert sorted(os.listdir(root)) == before, (args, recipe, sorted(os.listdir(root)))
            COUNTS["cli:error"] += 1
        else:
            out = root / "model.qdq.onnx"
            onnx.checker.check_model(onnx.load(str(out)))
            COUNTS["cli:ok"] += 1


@FAST
@given(command_lines())
def test_command_lines(case):
    _cli_case(case)


@pytest.mark.slow
@SLOW
@given(command_lines())
def test_command_lines_slow(case):
    _cli_case(case)


# ------------------------------------------------------------------------------------------------ Ctrl-C at any time


def _interrupt_at(delay: float, tmp: Path) -> str:
    """Run the CLI as a subprocess, send SIGINT ``delay`` seconds after its first log line; check the aftermath."""
    import signal
    import subprocess
    import sys
    import time

    root = tmp / "case"
    root.mkdir()
    (root / "model.onnx").write_bytes(convnet().SerializeToString())
    (root / "calib").mkdir()
    for i, feed in enumerate(feeds_for(convnet(), 8)):
        np.savez(root / "calib" / f"s{i}.npz", **feed)
    before = sorted(p.name for p in root.iterdir())
    proc = subprocess.Popen([sys.executable, "-m", "qcompile", str(root / "model.onnx"), "--calib", str(root / "calib"),
                             "--no-progress", "-v"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    first = proc.stderr.readline()  # the first INFO line: past start-up, inside the guarded command
    time.sleep(delay)
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    err = first + err
    assert "Traceback" not in out + err, err
    if not (root / "model.qdq.onnx").exists():
        assert proc.returncode == 130, (proc.returncode, out, err)
        assert err.strip().splitlines()[-1] == "error: interrupted; nothing was written", err
        assert sorted(p.name for p in root.iterdir()) == before, sorted(p.name for p in root.iterdir())
        return "interrupted"
    # saved before the signal: then it ends normally, or click's "Aborted!" (1) while printing the summary, or
    # -SIGINT during interpreter shutdown (handlers already reset); the files are complete either way
    assert proc.returncode in (0, 1, -signal.SIGINT), (proc.returncode, err)
    onnx.checker.check_model(onnx.load(str(root / "model.qdq.onnx")))
    assert (root / "model.qdq.report.json").is_file()
    return "finished"


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.8, 1.2, 2.0])
def test_ctrl_c_at_any_time_leaves_nothing_behind(delay, tmp_path):
    COUNTS[f"sigint:{_interrupt_at(delay, tmp_path)}"] += 1
