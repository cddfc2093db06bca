"""Every class of bad input qcompile must survive, run through the real CLI (table-driven).

Each ``Case`` builds its inputs in a fresh folder and runs ``qcompile`` on them — in process through click's
CliRunner, or as a subprocess where a signal or an injected I/O fault matters — and states the outcome:

- error cases: the exit code, ONE stderr line ``error: ...`` holding a stable substring, no traceback, an empty
  stdout, and the folder exactly as it was (no output, no report, no temporary file, inputs untouched);
- defined-behaviour cases (exit 0): the only new files are the output model and its report, the model passes
  onnx.checker and loads in ONNX Runtime, plus a case-specific check.

``benchmarks/bad_inputs_table.py`` runs the same ``CASES`` and prints the markdown table (docs/bad-inputs.md).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# ------------------------------------------------------------------------------------------------ the harness


@dataclass(frozen=True)
class Case:
    group: str                                   # which bullet of the reliability issue it belongs to
    name: str                                    # the bad-input class (pytest id)
    input: str                                   # what is fed, for the table
    build: Callable[[Path], list[str]]           # writes inputs under the folder, returns the CLI arguments
    exit_code: int = 2
    message: str = ""                            # stable substring of the error line (exit 0: of the output)
    check: Callable[[Path, "Outcome"], None] | None = None   # exit 0: what the output must satisfy
    prelude: str = ""                            # python run before the CLI in a subprocess (fault injection)
    send_signal: int | None = None               # sent once the prelude touches MARKER
    usage_error: bool = False                    # click's own usage error block ("Usage: ... Error: ...")
    tail: tuple[str, ...] = ("--no-progress",)   # appended to the arguments (the tools have no --no-progress)
    launcher: bool = False                       # run through the console script's launcher (start-up signals)


@dataclass
class Outcome:
    exit_code: int
    stdout: str
    stderr: str
    new: list[str] = field(default_factory=list)       # paths relative to the case folder
    changed: list[str] = field(default_factory=list)   # modified or removed
    seconds: float = 0.0

    @property
    def line(self) -> str:
        """The message the user sees: the error line, or the 'wrote ...' line (+ warnings) on success."""
        err = [ln for ln in self.stderr.splitlines() if ln.strip()]
        if self.exit_code != 0:
            return next((ln for ln in err if ln.startswith(("error: ", "Error: "))), err[-1] if err else "")
        out = [ln for ln in self.stdout.splitlines() if ln.startswith("wrote ")]
        warnings = [ln.split(": ", 1)[-1] for ln in err if ln.startswith("WARNING")]
        return "; ".join(out[:1] + warnings[:2])


def _snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under root (dot files included, links not followed, FIFOs not opened)."""
    state = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for entry in dirnames + filenames:
            path = Path(dirpath) / entry
            st = path.lstat()
            key = str(path.relative_to(root))
            if stat.S_ISREG(st.st_mode) and st.st_size <= 64 << 20:
                state[key] = ("file", hashlib.sha256(path.read_bytes()).hexdigest())
            else:
                state[key] = (stat.S_IFMT(st.st_mode), st.st_size, st.st_mtime_ns, st.st_ino)
    return state


_RUNNER = """
import sys
from qcompile.cli import main
main(sys.argv[1:], prog_name="qcompile")
"""

_LAUNCHER = """
import sys
import qcompile_launcher
sys.argv[0] = "qcompile"
qcompile_launcher.main()
"""

MAX_ERROR_LINE = 300 + len("error: ")   # cli/main.py's MESSAGE_LIMIT


def _run_subprocess(case: Case, args: list[str], marker: Path) -> tuple[int, str, str]:
    code = f"MARKER = {str(marker)!r}\n" + case.prelude + (_LAUNCHER if case.launcher else _RUNNER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=str(REPO))
    if case.send_signal is not None:
        deadline = time.monotonic() + 120
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        if proc.poll() is None:
            proc.send_signal(case.send_signal)
    out, err = proc.communicate(timeout=180)
    return proc.returncode, out, err


def run_case(case: Case, folder: Path) -> Outcome:
    """Build the case's inputs under folder/case, run qcompile, and report what it did to the folder."""
    root = folder / "case"
    root.mkdir(parents=True)
    marker = folder / "marker"
    args = [str(a) for a in case.build(root)] + list(case.tail)
    before = _snapshot(root)
    start = time.perf_counter()
    if case.prelude or case.send_signal is not None or case.launcher:
        code, out, err = _run_subprocess(case, args, marker)
    else:
        from click.testing import CliRunner

        from qcompile.cli import main
        result = CliRunner().invoke(main, args, prog_name="qcompile")
        code, out, err = result.exit_code, result.stdout, result.stderr
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            import traceback
            err += "".join(traceback.format_exception(result.exception))
    seconds = time.perf_counter() - start
    after = _snapshot(root)
    new = sorted(k for k in after if k not in before)
    changed = sorted(k for k in before if after.get(k) != before[k])
    return Outcome(code, out, err, new, changed, seconds)


def assert_outcome(case: Case, outcome: Outcome, folder: Path) -> None:
    text = outcome.stdout + outcome.stderr
    assert "Traceback" not in text and "internal error" not in text, text
    assert outcome.exit_code == case.exit_code, (outcome.exit_code, text)
    assert not outcome.changed, f"inputs modified or removed: {outcome.changed}"
    if case.exit_code != 0:
        assert outcome.new == [], f"files left behind: {outcome.new}"
        assert outcome.stdout == "", outcome.stdout
        lines = [ln for ln in outcome.stderr.splitlines() if ln.strip()]
        if case.usage_error:  # click's block: "Usage: ...", "Try ...", "Error: ..."
            assert lines and lines[-1].startswith("Error: "), outcome.stderr
        else:
            assert len(lines) == 1 and lines[0].startswith("error: "), outcome.stderr
            assert len(lines[0]) <= MAX_ERROR_LINE, f"error line of {len(lines[0])} characters"
        assert case.message in outcome.line, (case.message, outcome.line)
        return
    root = folder / "case"
    models = [p for p in outcome.new if p.endswith(".onnx")]
    reports = [p for p in outcome.new if p.endswith(".report.json")]
    assert len(models) == 1 and len(reports) == 1 and len(outcome.new) == 2, outcome.new
    model = onnx.load(str(root / models[0]))
    onnx.checker.check_model(model)
    import onnxruntime as ort
    ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    report = json.loads((root / reports[0]).read_text(encoding="utf-8"))
    assert case.message in text, (case.message, text)
    if case.check is not None:
        case.check(root, outcome, model, report)


# ------------------------------------------------------------------------------------------------ inputs

N_CALIB = 4


@functools.cache
def _tiny_cnn() -> bytes:
    from models import generate
    return generate.tiny_cnn().SerializeToString()


@functools.cache
def _tiny_cnn_samples() -> tuple[dict[str, np.ndarray], ...]:
    from models import generate
    return tuple(generate.make_samples("tiny_cnn", N_CALIB))


def _cnn(root: Path) -> tuple[Path, Path]:
    """root/model.onnx (tiny_cnn: input [batch,3,32,32] -> logits [batch,10]) and root/calib/ (4 .npz)."""
    model = root / "model.onnx"
    model.write_bytes(_tiny_cnn())
    calib = root / "calib"
    calib.mkdir()
    for i, sample in enumerate(_tiny_cnn_samples()):
        np.savez(calib / f"s{i}.npz", **sample)
    return model, calib


def _cnn_args(root: Path, *extra) -> list:
    model, calib = _cnn(root)
    return [model, "--calib", calib, *extra]


def _cnn_model(root: Path, data: bytes) -> list:
    """tiny_cnn's calibration folder with data as the model file."""
    _, calib = _cnn(root)
    (root / "model.onnx").write_bytes(data)
    return [root / "model.onnx", "--calib", calib]


def _cnn_calib(root: Path, files: dict[str, object]) -> list:
    """tiny_cnn with a calibration folder of the given files (array dict -> .npz, array -> .npy, bytes -> raw)."""
    model = root / "model.onnx"
    model.write_bytes(_tiny_cnn())
    calib = root / "data"
    calib.mkdir()
    for name, content in files.items():
        path = calib / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif isinstance(content, dict):
            np.savez(path, **content)
        else:
            np.save(path, content)
    return [model, "--calib", calib]


def _image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((1, 3, 32, 32)).astype(np.float32)


def _mlp(opset: int = 17, layers: int = 3) -> onnx.ModelProto:
    """x [batch, 8] -> (MatMul + Relu) x (layers - 1) -> MatMul -> y [batch, 4]; the last MatMul is the classifier."""
    rng = np.random.default_rng(7)
    nodes, inits, h = [], [], "x"
    for i in range(layers):
        n_out = 4 if i == layers - 1 else 8
        inits.append(numpy_helper.from_array((rng.standard_normal((8, n_out)) / 3).astype(np.float32), f"w{i}"))
        out = "y" if i == layers - 1 else f"h{i}"
        nodes.append(helper.make_node("MatMul", [h, f"w{i}"], [out], name=f"fc{i}"))
        if i < layers - 1:
            nodes.append(helper.make_node("Relu", [out], [f"r{i}"], name=f"relu{i}"))
            h = f"r{i}"
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _graph_case(root: Path, model: onnx.ModelProto | bytes, feeds: list[dict] | None = None, *extra) -> list:
    """root/model.onnx + root/calib/ with feeds (default: 4 items x [2, 8] for the MLP's input x)."""
    path = root / "model.onnx"
    path.write_bytes(model if isinstance(model, bytes) else model.SerializeToString())
    calib = root / "calib"
    calib.mkdir()
    if feeds is None:
        feeds = [{"x": np.random.default_rng(i).standard_normal((2, 8)).astype(np.float32)} for i in range(N_CALIB)]
    for i, feed in enumerate(feeds):
        np.savez(calib / f"s{i}.npz", **feed)
    return [path, "--calib", calib, *extra]


def _mutated(mutate: Callable[[onnx.ModelProto], None], **kw) -> Callable[[Path], list]:
    def build(root: Path) -> list:
        model = _mlp(**kw)
        mutate(model)
        return _graph_case(root, model)
    return build


def _set(obj, **attrs):
    for k, v in attrs.items():
        setattr(obj, k, v)


def _external(location: str, *, offset: str = "0", length: str | None = None, data: bytes | None = None,
              setup: Callable[[Path], None] | None = None, extra_keys=()) -> Callable[[Path], list]:
    """The MLP whose first weight lives in external data at ``location`` (fields written verbatim)."""
    def build(root: Path) -> list:
        model = _mlp()
        t = model.graph.initializer[0]
        raw = t.raw_data
        (root / "w.bin").write_bytes(raw if data is None else data)
        if setup is not None:
            setup(root)
        t.ClearField("raw_data")
        t.data_location = TensorProto.EXTERNAL
        for k, v in (("location", location), ("offset", offset), ("length", str(len(raw)) if length is None else length),
                     *extra_keys):
            e = t.external_data.add()
            e.key, e.value = k, v
        return _graph_case(root, model)
    return build


def _sparse_file(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        f.truncate(size)


def _nested_bytes(depth: int) -> bytes:
    """A model whose graph nests If subgraphs ``depth`` deep, encoded by hand (protobuf will not build it)."""
    def ld(number: int, payload: bytes) -> bytes:
        return _varint(number << 3 | 2) + _varint(len(payload)) + payload
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["o"])], "leaf", [],
                              [helper.make_tensor_value_info("o", TensorProto.FLOAT, None)]).SerializeToString()
    out = helper.make_tensor_value_info("o", TensorProto.FLOAT, None).SerializeToString()
    for _ in range(depth):
        attr = ld(1, b"then_branch") + _varint(20 << 3) + _varint(5) + ld(6, graph)  # name, type=GRAPH, g
        node = helper.make_node("If", ["c"], ["o"]).SerializeToString() + ld(5, attr)
        graph = ld(1, node) + ld(2, b"g") + ld(12, out)
    return _varint(1 << 3) + _varint(8) + ld(8, helper.make_opsetid("", 17).SerializeToString()) + ld(7, graph)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _functions_cycle(model: onnx.ModelProto) -> None:
    opset = [helper.make_opsetid("", 17)]
    model.functions.extend([
        helper.make_function("local", "F", ["a"], ["b"], [helper.make_node("G", ["a"], ["b"], domain="local")], opset),
        helper.make_function("local", "G", ["a"], ["b"], [helper.make_node("F", ["a"], ["b"], domain="local")], opset),
    ])
    model.opset_import.append(helper.make_opsetid("local", 1))
    _set(model.graph.node[1], op_type="F", domain="local")


def _two_inputs(root: Path, a_rows: int, b_rows: int) -> list:
    """x, z [batch, 8] -> Add -> MatMul -> Relu -> MatMul -> y, fed with a_rows and b_rows rows."""
    model = _mlp()
    model.graph.input.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 8]))
    model.graph.node.insert(0, helper.make_node("Add", ["x", "z"], ["xz"], name="add"))
    model.graph.node[1].input[0] = "xz"
    rng = np.random.default_rng(0)
    feeds = [{"x": rng.standard_normal((a_rows, 8)).astype(np.float32),
              "z": rng.standard_normal((b_rows, 8)).astype(np.float32)}]
    return _graph_case(root, model, feeds)


def _hard_link(root: Path) -> None:
    os.link(root / "w.bin", root / "alias.bin")


def _symlink_out(root: Path) -> None:
    outside = root.parent / "outside"
    outside.mkdir()
    (outside / "secret.bin").write_bytes((root / "w.bin").read_bytes())
    (root / "w.bin").unlink()
    (root / "w.bin").symlink_to(outside / "secret.bin")


def _fifo(root: Path) -> None:
    (root / "w.bin").unlink()
    os.mkfifo(root / "w.bin")


def _zip_bytes() -> bytes:
    import io
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("archive/data.pkl", b"\x80\x04K\x01.")
    return buffer.getvalue()


def _png_bytes() -> bytes:
    import io

    from PIL import Image
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------------ checks for exit 0


def _ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def _nothing_quantized(root, outcome, model, report):
    assert report["summary"]["quantized_nodes"] == 0
    assert "QuantizeLinear" not in _ops(model) and "DequantizeLinear" not in _ops(model)
    assert sorted(_ops(model)) == sorted(_ops(onnx.load(str(root / "model.onnx"))))


def _quantized(minimum: int, cosine: float = 0.98):
    def check(root, outcome, model, report):
        assert report["summary"]["quantized_nodes"] >= minimum, report["summary"]
        for name, v in report["fidelity"]["outputs"].items():
            assert v["cosine_mean"] >= cosine, (name, v)
    return check


def _keeps_ops(*ops: str, minimum: int = 1):
    def check(root, outcome, model, report):
        assert set(ops) <= set(_ops(model)), _ops(model)
        _quantized(minimum)(root, outcome, model, report)
    return check


def _shared_once(root, outcome, model, report):
    """Both MatMuls quantised; without a bias the input scale does not change the weight: one DQ serves both."""
    dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0].startswith("w0")]
    assert len(dq) == 1 and sum(1 for n in model.graph.node if dq[0].output[0] in n.input) == 2, dq
    _quantized(2)(root, outcome, model, report)


def _shared_conv_twice(root, outcome, model, report):
    """The bias bounds the weight scale per input scale: two weight DQs, with distinct names, one per Conv."""
    dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0].startswith("cw")]
    assert len(dq) == 2 and len({n.output[0] for n in dq}) == 2, [n.name for n in dq]
    _quantized(2)(root, outcome, model, report)


def _unique_names(root, outcome, model, report):
    names = [n.name for n in model.graph.node]
    assert len(set(names)) == len(names), names
    _quantized(1)(root, outcome, model, report)


def _node_skipped(node: str, reason: str):
    def check(root, outcome, model, report):
        entry = next(n for n in report["nodes"] if n["name"] == node)
        assert entry["status"] == "skipped" and reason in entry["reason"], entry
    return check


def _upgraded(opset: int):
    def check(root, outcome, model, report):
        assert f"upgraded opset {opset} -> 13" in " ".join(report["warnings"]), report["warnings"]
        assert {o.domain or "ai.onnx": o.version for o in model.opset_import}["ai.onnx"] >= 13
        _quantized(1)(root, outcome, model, report)
    return check


def _samples(count: int):
    def check(root, outcome, model, report):
        assert report["input"]["calibration"]["samples"] == count, report["input"]["calibration"]
        _quantized(1, cosine=0.9)(root, outcome, model, report)
    return check


# ------------------------------------------------------------------------------------------------ fault injection

_TOUCH_AND_WAIT = """
import pathlib, time
def _touch_and_wait():
    pathlib.Path(MARKER).touch()
    time.sleep(60)
"""

_SLOW_SAVE = _TOUCH_AND_WAIT + """
import qcompile.io as _io
_open = _io.StagedFiles.open
def _slow_open(self, dest):
    f = _open(self, dest)
    if dest.name.endswith(".onnx"):  # the output's temporary file now exists
        _touch_and_wait()
    return f
_io.StagedFiles.open = _slow_open
"""

_SLOW_CALIBRATION = _TOUCH_AND_WAIT + """
import onnxruntime as _ort
_run = _ort.InferenceSession.run
def _slow_run(self, *a, **k):
    _touch_and_wait()
    return _run(self, *a, **k)
_ort.InferenceSession.run = _slow_run
"""


def _disk_full(suffix: str) -> str:
    return f"""
import errno, qcompile.io as _io
_open = _io.StagedFiles.open
def _full(self, dest):
    f = _open(self, dest)
    if dest.name.endswith({suffix!r}):  # fails with the temporary file created
        f.close()
        raise OSError(errno.ENOSPC, "No space left on device")
    return f
_io.StagedFiles.open = _full
"""


# ------------------------------------------------------------------------------------------------ case builders


def _sparse_model(root: Path, size: int) -> list:
    args = _cnn_model(root, b"")
    _sparse_file(root / "model.onnx", size)
    return args


def _big_external(root: Path) -> list:
    """The MLP plus an unused float initializer of 17 GiB in a sparse external file."""
    model = _mlp()
    n = 17 * GIB // 4
    _sparse_file(root / "big.bin", 4 * n)
    big = TensorProto(name="big", data_type=TensorProto.FLOAT, dims=[n])
    big.data_location = TensorProto.EXTERNAL
    for k, v in (("location", "big.bin"), ("offset", "0"), ("length", str(4 * n))):
        e = big.external_data.add()
        e.key, e.value = k, v
    model.graph.initializer.append(big)
    return _graph_case(root, model)


def _mutated_ok(mutate: Callable[[onnx.ModelProto], None], **kw) -> Callable[[Path], list]:
    return _mutated(mutate, **kw)


def _share_weight(model: onnx.ModelProto) -> None:
    model.graph.node[2].input[1] = "w0"  # fc1 reads fc0's weight
    del model.graph.initializer[1]


def _reverse_nodes(model: onnx.ModelProto) -> None:
    nodes = list(model.graph.node)[::-1]
    copies = [onnx.NodeProto() for _ in nodes]
    for dst, src in zip(copies, nodes):
        dst.CopyFrom(src)
    model.graph.ClearField("node")
    model.graph.node.extend(copies)


def _shared_conv() -> onnx.ModelProto:
    """x [batch,4,6,6] -> Conv(cw, cb) -> Relu -> Mul 5 -> Conv(cw, cb) -> GAP -> Flatten -> Gemm -> y [batch,3]."""
    rng = np.random.default_rng(5)
    inits = [numpy_helper.from_array((rng.standard_normal((4, 4, 3, 3)) / 6).astype(np.float32), "cw"),
             numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "cb"),
             numpy_helper.from_array(np.float32(5.0), "five"),
             numpy_helper.from_array(rng.standard_normal((3, 4)).astype(np.float32), "gw")]
    nodes = [helper.make_node("Conv", ["x", "cw", "cb"], ["c0"], name="conv0", pads=[1] * 4),
             helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
             helper.make_node("Mul", ["r0", "five"], ["m0"], name="scale"),
             helper.make_node("Conv", ["m0", "cw", "cb"], ["c1"], name="conv1", pads=[1] * 4),
             helper.make_node("GlobalAveragePool", ["c1"], ["p"], name="gap"),
             helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "gw"], ["y"], name="head", transB=1)]
    graph = helper.make_graph(nodes, "shared_conv",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _no_compute() -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"], name="relu"),
         helper.make_node("Add", ["r", "b"], ["a"], name="add"),
         helper.make_node("Softmax", ["a"], ["y"], name="softmax", axis=-1)],
        "no_compute", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])],
        [numpy_helper.from_array(np.linspace(-1, 1, 8).astype(np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _unsupported_ops() -> onnx.ModelProto:
    """MatMul -> Erf -> com.microsoft Gelu -> TopK(values) -> MatMul -> MatMul."""
    model = _mlp(layers=4)
    g = model.graph
    k = numpy_helper.from_array(np.array([8], np.int64), "k")
    g.initializer.append(k)
    g.node[1].CopyFrom(helper.make_node("Erf", ["h0"], ["e"], name="erf"))
    g.node.insert(2, helper.make_node("Gelu", ["e"], ["gl"], name="gelu", domain="com.microsoft"))
    g.node.insert(3, helper.make_node("TopK", ["gl", "k"], ["r0", "idx"], name="topk", axis=-1))
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return model


def _zero_size() -> onnx.ModelProto:
    """x -> Slice(x, 0:0 on axis 1) = [batch, 0]; Concat(x, empty) -> MatMul chain."""
    model = _mlp()
    g = model.graph
    for name, value in (("s0", [0]), ("e0", [0]), ("ax", [1])):
        g.initializer.append(numpy_helper.from_array(np.array(value, np.int64), name))
    g.node.insert(0, helper.make_node("Slice", ["x", "s0", "e0", "ax"], ["empty"], name="slice"))
    g.node.insert(1, helper.make_node("Concat", ["x", "empty"], ["xc"], name="concat", axis=1))
    g.node[2].input[0] = "xc"
    return model


def _scaled_mlp(scale: float) -> onnx.ModelProto:
    model = _mlp()
    w = numpy_helper.to_array(model.graph.initializer[0]) * np.float32(scale)
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(w.astype(np.float32), "w0"))
    return model


def _huge_gemm() -> onnx.ModelProto:
    """x [batch, 8] -> Gemm(W ~ 1e30, b) -> y: with inputs ~ 1e12 its int32 bias scale s_x * s_w exceeds float32."""
    rng = np.random.default_rng(5)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w0", "b0"], ["y"], name="fc0")], "huge",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array((rng.standard_normal((8, 4)) * 1e30).astype(np.float32), "w0"),
         numpy_helper.from_array(np.ones(4, np.float32), "b0")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _int_input_model() -> onnx.ModelProto:
    """ids int64 [batch, 4] -> Gather(embedding [10, 8]) -> MatMul -> y."""
    rng = np.random.default_rng(3)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["emb", "ids"], ["e"], name="gather"),
         helper.make_node("MatMul", ["e", "w0"], ["h"], name="fc0"),
         helper.make_node("MatMul", ["h", "w"], ["y"], name="fc")],
        "ids", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4, 4])],
        [numpy_helper.from_array(rng.standard_normal((10, 8)).astype(np.float32), "emb"),
         numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "w0"),
         numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _with(x: np.ndarray, value: float) -> np.ndarray:
    x = x.copy()
    x.flat[17] = value
    return x


def _npz_bytes() -> bytes:
    import io
    buffer = io.BytesIO()
    np.savez(buffer, input=_image())
    return buffer.getvalue()


def _npy_two_inputs(root: Path) -> list:
    args = _two_inputs(root, 2, 2)
    calib = Path(args[2])
    for p in calib.iterdir():
        p.unlink()
    np.save(calib / "a.npy", np.zeros((2, 8), np.float32))
    return args


def _images_for_mlp(root: Path) -> list:
    args = _graph_case(root, _mlp(), [])
    (Path(args[2]) / "a.png").write_bytes(_png_bytes())
    return args


def _recipe(root: Path, text: str | bytes) -> list:
    recipe = root / "recipe.toml"
    recipe.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return _cnn_args(root, "--config", recipe)


def _symlinked_output(root: Path) -> list:
    args = _cnn_args(root)
    (root / "link.onnx").symlink_to(root / "model.onnx")
    return args + ["-o", root / "link.onnx"]


def _fifo_output(root: Path) -> list:
    args = _cnn_args(root)
    os.mkfifo(root / "pipe.onnx")
    return args + ["-o", root / "pipe.onnx"]



# -- issue 20: file damage, limits, internal errors, signals, silent wrongs


def _onto_calib_file(flag: str) -> Callable[[Path], list]:
    return lambda r: _cnn_args(r, flag, r / "calib" / "s0.npz")


def _recipe_as_output(root: Path) -> list:
    recipe = root / "recipe.toml"
    recipe.write_text("[calibration]\nnum_samples = 4\n", encoding="utf-8")
    return _cnn_args(root, "--config", recipe, "-o", recipe)


def _eval_file_as_report(root: Path) -> list:
    args = _cnn_args(root)
    folder = root / "eval"
    folder.mkdir()
    np.savez(folder / "e0.npz", input=_image(5))
    return args + ["--eval-data", folder, "--report", folder / "e0.npz"]


def _external_file_as_output(root: Path) -> list:
    # --overwrite: without it the existing w.bin is refused before the model (and its data files) is read
    return _external("w.bin")(root) + ["-o", root / "w.bin", "--overwrite"]


def _existing_output(root: Path) -> list:
    args = _cnn_args(root)
    (root / "model.qdq.onnx").write_bytes(b"an earlier result")
    return args


def _npy_header_only(shape: tuple[int, ...]) -> bytes:
    import io
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return buffer.getvalue() + bytes(64)


def _npz_header_only(name: str, shape: tuple[int, ...]) -> bytes:
    import io
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr(f"{name}.npy", _npy_header_only(shape))
    return buffer.getvalue()


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels (no image data: only the header is ever read)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + \
        chunk(b"IEND", b"")


def _png16_bytes() -> bytes:
    import io

    from PIL import Image
    buffer = io.BytesIO()
    Image.fromarray((np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 60)).save(buffer, format="PNG")
    return buffer.getvalue()


def _float_mlp(dtype: np.dtype, onnx_type: int) -> Callable[[Path], list]:
    def build(root: Path) -> list:
        model = _mlp()
        for t in model.graph.initializer:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(dtype), t.name))
        for v in (*model.graph.input, *model.graph.output):
            v.type.tensor_type.elem_type = onnx_type
        feeds = [{"x": np.random.default_rng(i).standard_normal((2, 8)).astype(dtype)} for i in range(N_CALIB)]
        return _graph_case(root, model, feeds, "--quantize-classifier")
    return build


def _ir3_model() -> onnx.ModelProto:
    model = _mlp(opset=9)
    model.ir_version = 3
    model.graph.input.extend(helper.make_tensor_value_info(t.name, TensorProto.FLOAT, list(t.dims))
                             for t in model.graph.initializer)
    return model


def _sparse_weight_model() -> onnx.ModelProto:
    model = _mlp()
    dense = numpy_helper.to_array(model.graph.initializer[0])
    model.graph.initializer.remove(model.graph.initializer[0])
    index = np.flatnonzero(dense).astype(np.int64)
    model.graph.sparse_initializer.append(helper.make_sparse_tensor(
        numpy_helper.from_array(dense.reshape(-1)[index], "w0"), numpy_helper.from_array(index, "w0_index"),
        list(dense.shape)))
    return model


def _endless_loop_model() -> onnx.ModelProto:
    """x -> Loop(trip count INT64_MAX, body: v + 1) -> MatMul -> y: one run never ends."""
    body = helper.make_graph(
        [helper.make_node("Add", ["v", "one"], ["v_next"]), helper.make_node("Identity", ["cond"], ["cond_next"])],
        "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                 helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
                 helper.make_tensor_value_info("v", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("cond_next", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_next", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.ones((1, 8), np.float32), "one")])
    graph = helper.make_graph(
        [helper.make_node("Loop", ["trips", "go", "x"], ["looped"], body=body, name="loop"),
         helper.make_node("MatMul", ["looped", "w"], ["y"], name="fc")], "endless",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(np.full((8, 4), 0.1, np.float32), "w"),
         numpy_helper.from_array(np.array(2**63 - 1, np.int64), "trips"), numpy_helper.from_array(np.array(True), "go")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _dynamic_image_model(root: Path) -> list:
    model = onnx.load_from_string(_tiny_cnn())
    for index, name in ((2, "height"), (3, "width")):
        model.graph.input[0].type.tensor_type.shape.dim[index].dim_param = name
    args = _cnn_calib(root, {"a.png": _png_bytes()})
    (root / "model.onnx").write_bytes(model.SerializeToString())
    return args


def _report_file(root: Path, data: object) -> Path:
    report = root / "r.json"
    report.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return report


def _report_over_model(root: Path) -> list:
    model, _ = _cnn(root)
    return ["report", _report_file(root, {"summary": {}, "input": {"path": str(model)}}), "-o", model]


def _compare_different_inputs(root: Path) -> list:
    args = _graph_case(root, _mlp())
    other = _mlp()
    other.graph.input[0].name = "z"
    other.graph.node[0].input[0] = "z"
    (root / "other.onnx").write_bytes(other.SerializeToString())
    return ["compare", root / "model.onnx", root / "other.onnx", "--data", args[2]]


_SLOW_IMPORT = """
import pathlib, sys, time
class _SlowImport:  # the compiler's imports take 60 s, so a signal lands inside them
    def find_spec(self, name, path=None, target=None):
        if name == "qcompile":
            pathlib.Path(MARKER).touch()
            time.sleep(60)
        return None
sys.meta_path.insert(0, _SlowImport())
"""


def _startup(root: Path) -> list:
    return _cnn_args(root)

# ------------------------------------------------------------------------------------------------ the cases

M, D, G, C, F, O, S, T = ("model file", "model data/structure", "graph edge case", "calibration data",
                          "config/flags", "output path", "interrupt/fault", "tools (report, compare)")
GIB = 1 << 30

CASES: list[Case] = [
    # -- the model file
    Case(M, "missing model file", "nope.onnx (does not exist)",
         lambda r: [r / "nope.onnx", "--calib", _cnn(r)[1]], message="no such file"),
    Case(M, "model path is a folder", "a directory given as MODEL",
         lambda r: [_cnn(r)[1], "--calib", r / "calib"], message="is a directory", usage_error=True),
    Case(M, "empty model file", "0-byte model.onnx", lambda r: _cnn_model(r, b""), message="empty"),
    Case(M, "truncated model", "first 60% of tiny_cnn.onnx",
         lambda r: _cnn_model(r, _tiny_cnn()[: len(_tiny_cnn()) * 3 // 5]), message="cannot load model"),
    Case(M, "random bytes", "4 KiB of random bytes",
         lambda r: _cnn_model(r, np.random.default_rng(1).bytes(4096)), message="cannot load model"),
    Case(M, "not ONNX: PNG", "a PNG image named model.onnx", lambda r: _cnn_model(r, _png_bytes()),
         message="looks like a PNG image"),
    Case(M, "not ONNX: zip / PyTorch checkpoint", "a zip archive named model.onnx",
         lambda r: _cnn_model(r, _zip_bytes()), message="zip archive"),
    Case(M, "not ONNX: text", "a text file named model.onnx",
         lambda r: _cnn_model(r, b"graph {\n  node: Conv\n}\n"), message="looks like a text file"),
    Case(M, "model file over protobuf's 2 GiB", "3 GiB (sparse) model.onnx",
         lambda r: _sparse_model(r, 3 * GIB), message="over protobuf's 2 GiB limit"),
    Case(M, "model file over the size limit", "17 GiB (sparse) model.onnx",
         lambda r: _sparse_model(r, 17 * GIB), message="more than the limit"),
    Case(M, "protobuf recursion limit", "If subgraphs nested 40 deep (hand-encoded)",
         lambda r: _graph_case(r, _nested_bytes(40)), message="recursion limit"),
    Case(M, "model without graph", "ModelProto with only ir_version",
         lambda r: _graph_case(r, onnx.ModelProto(ir_version=8).SerializeToString() + b"\x12\x01a"),
         message="no graph"),
    Case(M, "graph without nodes", "a graph with inputs/outputs but no node",
         _mutated(lambda m: m.graph.ClearField("node")), message="has no nodes"),
    Case(M, "external data: absolute path", "location=/etc/passwd", _external("/etc/passwd"),
         message="is an absolute path"),
    Case(M, "external data: ../ traversal (CVE-2022-25882)", "location=../../etc/passwd",
         _external("../../etc/passwd"), message="leaves the model's folder"),
    Case(M, "external data: nested traversal (CVE-2024-27318)", "location=sub/../../etc/passwd",
         _external("sub/../../etc/passwd"), message="leaves the model's folder"),
    Case(M, "external data: backslash traversal", r"location=..\..\secret.bin", _external("..\\..\\secret.bin"),
         message="leaves the model's folder"),
    Case(M, "external data: unknown keys (attribute-injection pattern)", "valid location plus keys __class__, _x",
         _external("w.bin", extra_keys=(("__class__", "x"), ("_x", "1"))), exit_code=0, message="wrote",
         check=_quantized(1)),
    Case(M, "external data: symlink out of the folder", "w.bin -> ../outside/secret.bin",
         _external("w.bin", setup=_symlink_out), message="resolves outside the model's folder"),
    Case(M, "external data: hard link", "w.bin with a second hard link",
         _external("w.bin", setup=_hard_link), message="hard links"),
    Case(M, "external data: FIFO / device", "w.bin is a named pipe (a read would block)",
         _external("w.bin", setup=_fifo), message="not a regular file"),
    Case(M, "external data: offset past the end", "offset=99999999999", _external("w.bin", offset="99999999999"),
         message="past the end"),
    Case(M, "external data: negative offset", "offset=-8", _external("w.bin", offset="-8"),
         message="not a non-negative integer"),
    Case(M, "external data: huge length", "length=2**62", _external("w.bin", length=str(2**62)),
         message="runs past the end"),
    Case(M, "external data: length != tensor bytes", "length=8 for a 256-byte tensor",
         _external("w.bin", length="8"), message="the tensor's shape needs 256"),
    Case(M, "external data: ORT in-memory marker", "location=*/_ORT_MEM_ADDR_/*",
         _external("*/_ORT_MEM_ADDR_/*"), message="in-memory marker"),
    Case(M, "external data: missing file", "location=gone.bin", _external("gone.bin"), message="not found"),
    Case(M, "external data over the size limit", "17 GiB (sparse) external tensor",
         _big_external, message="more than the limit"),
    # -- the model's structure
    Case(D, "dangling node input", "Relu reads a tensor nobody produces",
         _mutated(lambda m: m.graph.node[1].input.__setitem__(0, "nope")), message="reads 'nope', which no node"),
    Case(D, "graph cycle", "first MatMul reads the last node's output",
         _mutated(lambda m: m.graph.node[0].input.__setitem__(0, "y")), message="cycle"),
    Case(D, "tensor written twice (not SSA)", "two nodes write 'h0'",
         _mutated(lambda m: m.graph.node[2].output.__setitem__(0, "h0")), message="exactly one producer"),
    Case(D, "graph output not produced", "output 'zzz' has no producer",
         _mutated(lambda m: _set(m.graph.output[0], name="zzz")), message="graph output 'zzz' is not produced"),
    Case(D, "graph without outputs", "graph.output empty", _mutated(lambda m: m.graph.ClearField("output")),
         message="has no outputs"),
    Case(D, "unknown operator", "op_type FooBar in the ONNX domain",
         _mutated(lambda m: _set(m.graph.node[1], op_type="FooBar")), message="No Op registered for FooBar"),
    Case(D, "invalid attribute", "Relu with alpha=3", _mutated(
        lambda m: m.graph.node[1].attribute.append(helper.make_attribute("alpha", 3.0))),
         message="Unrecognized attribute: alpha"),
    Case(D, "model-local function cycle", "functions F -> G -> F", _mutated(_functions_cycle),
         message="Cycle detected in model-local function references"),
    Case(D, "IR version too new", "ir_version=99", _mutated(lambda m: _set(m, ir_version=99)),
         message="ir_version 99 is higher"),
    Case(D, "opset too new", "ai.onnx opset 99", _mutated(lambda m: _set(m.opset_import[0], version=99)),
         message="official support for domain ai.onnx"),
    Case(D, "no opset import", "opset_import empty", _mutated(lambda m: m.ClearField("opset_import")),
         message="must specify opset_import"),
    Case(D, "type mismatch", "int32 weight on a float MatMul", _mutated(lambda m: m.graph.initializer[0].CopyFrom(
        numpy_helper.from_array(np.ones((8, 8), np.int32), "w0"))), message="bound to different types"),
    Case(D, "shape mismatch", "weight [5, 8] for an input of width 8", _mutated(
        lambda m: m.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.ones((5, 8), np.float32), "w0"))),
         message="Incompatible dimensions"),
    Case(D, "tensor bytes != shape", "raw_data of 7 bytes for a [8, 8] float", _mutated(
        lambda m: _set(m.graph.initializer[0], raw_data=b"\0" * 7)), message="holds 7 bytes of data"),
    Case(D, "shape claiming 8 GiB", "a 256-byte weight declaring dims [2**31]", _mutated(
        lambda m: m.graph.initializer[0].dims.__setitem__(slice(None), [2**31])), message="need 8589934592"),
    Case(D, "input is not a tensor", "x is a sequence<tensor>", _mutated(lambda m: m.graph.input[0].type.CopyFrom(
        helper.make_sequence_type_proto(helper.make_tensor_type_proto(TensorProto.FLOAT, [2])))),
         message="seq(tensor(float))"),
    Case(D, "huge declared dims", "input dim 2**62", _mutated(
        lambda m: _set(m.graph.input[0].type.tensor_type.shape.dim[1], dim_value=2**62)),
         message="Incompatible dimensions"),
    Case(D, "model without inputs", "all-constant graph (nothing to calibrate)",
         _mutated(lambda m: (m.graph.initializer.append(numpy_helper.from_array(np.ones((2, 8), np.float32), "x")),
                             m.graph.ClearField("input"))), message="no inputs to feed"),
    # -- graph edge cases with a defined result (exit 0)
    Case(G, "no quantisable node", "Relu -> Add -> Softmax only", lambda r: _graph_case(r, _no_compute()),
         exit_code=0, message="no node was quantised", check=_nothing_quantized),
    Case(G, "unsupported ops pass through float", "Erf, TopK and com.microsoft Gelu between MatMuls",
         lambda r: _graph_case(r, _unsupported_ops()), exit_code=0, message="wrote",
         check=_keeps_ops("Erf", "TopK", "Gelu")),
    Case(G, "zero-size tensor", "a Slice giving [batch, 0] concatenated back", lambda r: _graph_case(r, _zero_size()),
         exit_code=0, message="wrote", check=_quantized(1)),
    Case(G, "shared weight", "one initializer feeds two MatMuls", _mutated_ok(_share_weight),
         exit_code=0, message="wrote", check=_shared_once),
    Case(G, "shared conv weight and bias, two input scales", "one Conv weight + bias at two activation ranges",
         lambda r: _graph_case(r, _shared_conv(), [{"x": np.random.default_rng(i).standard_normal((1, 4, 6, 6))
                                                      .astype(np.float32)} for i in range(N_CALIB)]),
         exit_code=0, message="wrote", check=_shared_conv_twice),
    Case(G, "duplicate node names", "every node named 'layer' (ORT refuses these)",
         _mutated_ok(lambda m: [_set(n, name="layer") for n in m.graph.node]), exit_code=0, message="wrote",
         check=_unique_names),
    Case(G, "NaN weights, result unused", "fc1's weight holds NaN; fc1 feeds only the float classifier",
         _mutated_ok(lambda m: m.graph.initializer[1].CopyFrom(
             numpy_helper.from_array(np.full((8, 8), np.nan, np.float32), "w1")), layers=3), exit_code=0,
         message="wrote", check=_node_skipped("fc1", "NaN or Inf")),
    Case(D, "NaN weights feeding a quantised node", "fc1's weight holds NaN; fc2 reads its output",
         _mutated(lambda m: m.graph.initializer[1].CopyFrom(
             numpy_helper.from_array(np.full((8, 8), np.nan, np.float32), "w1")), layers=4),
         message="weights hold NaN/Inf"),
    Case(G, "old opset", "ai.onnx opset 11 (per-channel needs 13)", _mutated_ok(lambda m: None, opset=11),
         exit_code=0, message="wrote", check=_upgraded(11)),
    Case(G, "nodes out of order", "valid graph written in reverse order",
         _mutated_ok(lambda m: _reverse_nodes(m)), exit_code=0, message="wrote", check=_quantized(1)),
    # -- calibration data
    Case(C, "calibration folder missing", "--calib no_such_dir",
         lambda r: [_cnn(r)[0], "--calib", r / "no_such_dir"], message="does not exist"),
    Case(C, "calibration path is a file", "--calib model.onnx",
         lambda r: [_cnn(r)[0], "--calib", r / "model.onnx"], message="is not a folder"),
    Case(C, "empty calibration folder", "a folder with no data files", lambda r: _cnn_calib(r, {"notes.txt": b"x"}),
         message="is empty"),
    Case(C, "mixed file kinds", "a.npz + b.npy", lambda r: _cnn_calib(r, {"a.npz": {"input": _image()},
                                                                          "b.npy": _image()}),
         message="mixes file kinds"),
    Case(C, "missing input name", "key 'images' instead of 'input'",
         lambda r: _cnn_calib(r, {"a.npz": {"images": _image()}}), message="missing input(s) ['input']"),
    Case(C, "unexpected input name", "'input' plus 'extra'",
         lambda r: _cnn_calib(r, {"a.npz": {"input": _image(), "extra": _image()}}), message="unexpected name(s)"),
    Case(C, "wrong dtype", "bool array for a float input",
         lambda r: _cnn_calib(r, {"a.npz": {"input": _image() > 0}}), message="no safe conversion"),
    Case(C, "float data for an integer input", "float32 token ids", lambda r: _graph_case(r, _int_input_model(), [
        {"ids": np.zeros((1, 4), np.float32)}]), message="float data cannot feed an integer input"),
    Case(C, "wrong rank", "[3, 32, 32] for [batch, 3, 32, 32]",
         lambda r: _cnn_calib(r, {"a.npz": {"input": _image()[0]}}), message="rank 3 != model rank 4"),
    Case(C, "wrong fixed dim", "[1, 3, 31, 32]", lambda r: _cnn_calib(r, {"a.npz": {"input": _image()[..., 1:, :]}}),
         message="model fixes it to 32"),
    Case(C, "mismatched batch dims", "x has 2 rows, z has 3 (both 'batch')", lambda r: _two_inputs(r, 2, 3),
         message="share batch dim 'batch'"),
    Case(C, "empty .npz file", "0-byte a.npz", lambda r: _cnn_calib(r, {"a.npz": b""}),
         message="unreadable or corrupt .npz"),
    Case(C, "truncated .npz file", "first half of a.npz", lambda r: _cnn_calib(r, {"a.npz": _npz_bytes()[:300]}),
         message="corrupt .npz"),
    Case(C, "empty batch", "[0, 3, 32, 32]", lambda r: _cnn_calib(r, {"a.npz": {"input": _image()[:0]}}),
         message="empty batch"),
    Case(C, "NaN in data", "one NaN pixel", lambda r: _cnn_calib(r, {"a.npz": {"input": _with(_image(), np.nan)}}),
         message="non-finite value(s)"),
    Case(C, "Inf in data", "one +Inf pixel", lambda r: _cnn_calib(r, {"a.npz": {"input": _with(_image(), np.inf)}}),
         message="non-finite value(s)"),
    Case(C, "values overflow the input dtype", "float64 1e300 for a float32 input",
         lambda r: _cnn_calib(r, {"a.npz": {"input": np.full((1, 3, 32, 32), 1e300)}}),
         message="values overflow float32"),
    Case(C, "values overflow inside the FP32 model", "x = 1e30 into weights x 1e10",
         lambda r: _graph_case(r, _scaled_mlp(1e10), [{"x": np.full((1, 8), 1e30, np.float32)}]),
         message="the FP32 model overflows there"),
    Case(C, "FP32 node overflowing only after quantisation", "x ~ 1e12 into a Gemm with W ~ 1e30 and a bias (--quantize-classifier)",
         lambda r: _graph_case(r, _huge_gemm(), [{"x": np.full((1, 8), 1e12, np.float32)}], "--quantize-classifier"),
         message="overflows float32 (the FP32 model overflows there)"),
    Case(C, "pickled object array", "np.savez of an object array",
         lambda r: _cnn_calib(r, {"a.npz": {"input": np.array([{"a": 1}], dtype=object)}}),
         message="cannot be read without pickle"),
    Case(C, ".npy for a two-input model", "a.npy with inputs x, z", lambda r: _npy_two_inputs(r),
         message="single-input models only"),
    Case(C, "images for a non-image model", "a PNG for the [batch, 8] MLP", lambda r: _images_for_mlp(r),
         message="images need one float input of rank 4"),
    Case(C, "corrupt image", "a .png holding text", lambda r: _cnn_calib(r, {"a.png": b"not a png"}),
         message="unreadable or corrupt image"),
    Case(C, "zero-variance data", "every sample all zeros",
         lambda r: _cnn_calib(r, {f"s{i}.npz": {"input": np.zeros((1, 3, 32, 32), np.float32)} for i in range(2)}),
         exit_code=0, message="wrote", check=_samples(2)),
    Case(C, "a single sample", "one [1, 3, 32, 32] file", lambda r: _cnn_calib(r, {"a.npz": {"input": _image()}}),
         exit_code=0, message="wrote", check=_samples(1)),
    Case(C, "float16 data", "float16 arrays for a float32 input (cast)",
         lambda r: _cnn_calib(r, {"a.npz": {"input": _image().astype(np.float16)}}), exit_code=0, message="wrote",
         check=_samples(1)),
    Case(C, "--num-samples beyond the data", "--num-samples 100000 with 4 samples (1 held out for fidelity)",
         lambda r: _cnn_args(r, "--num-samples", "100000"), exit_code=0, message="wrote",
         check=_samples(N_CALIB - 1)),
    # -- configuration and flags
    Case(F, "unknown TOML key", "[activation] symetric = true", lambda r: _recipe(r, "[activation]\nsymetric = true\n"),
         message="symetric"),
    Case(F, "invalid TOML", "'[[[' ", lambda r: _recipe(r, "[[[\n"), message="not valid TOML"),
    Case(F, "non-UTF-8 TOML", "bytes ff fe", lambda r: _recipe(r, b"\xff\xfe"), message="not UTF-8"),
    Case(F, "missing recipe", "--config nope.toml", lambda r: _cnn_args(r, "--config", r / "nope.toml"),
         message="cannot read config"),
    Case(F, "bad enum value", 'method = "foo"', lambda r: _recipe(r, '[activation]\nmethod = "foo"\n'),
         message="'foo' is not one of"),
    Case(F, "wrong value type", "num_samples = \"ten\"", lambda r: _recipe(r, '[calibration]\nnum_samples = "ten"\n'),
         message="num_samples"),
    Case(F, "--num-samples 0", "--num-samples 0", lambda r: _cnn_args(r, "--num-samples", "0"),
         message="num_samples must be >= 1"),
    Case(F, "--batch-size 0", "--batch-size 0", lambda r: _cnn_args(r, "--batch-size", "0"),
         message="batch_size must be >= 1"),
    Case(F, "percentile out of range", "--method percentile --percentile 150",
         lambda r: _cnn_args(r, "--method", "percentile", "--percentile", "150"), message="percentile must be in"),
    Case(F, "negative --fidelity-samples", "--fidelity-samples -1", lambda r: _cnn_args(r, "--fidelity-samples", "-1"),
         message="fidelity_samples must be >= 0"),
    Case(F, "non-numeric --mean", "--mean a,b", lambda r: _cnn_args(r, "--mean", "a,b"),
         message="--mean must be comma-separated numbers"),
    Case(F, "impossible --image-size", "--image-size 0", lambda r: _cnn_args(r, "--image-size", "0"),
         message="image size must be"),
    Case(F, "selector matches nothing", "--exclude conv_typo", lambda r: _cnn_args(r, "--exclude", "conv_typo"),
         message="conv_typo"),
    Case(F, "invalid selector regex", "--exclude '(('", lambda r: _cnn_args(r, "--exclude", "(("),
         message="invalid node pattern"),
    Case(F, "op type that cannot be quantised", "--op-types Softmax", lambda r: _cnn_args(r, "--op-types", "Softmax"),
         message="Softmax"),
    Case(F, "unknown flag", "--frobnicate", lambda r: _cnn_args(r, "--frobnicate"), message="No such option",
         usage_error=True),
    Case(F, "invalid choice", "--method foo", lambda r: _cnn_args(r, "--method", "foo"), message="'foo' is not one of",
         usage_error=True),
    Case(F, "missing --calib", "MODEL only", lambda r: [_cnn(r)[0]], message="Missing option '--calib'",
         usage_error=True),
    # -- where the output goes
    Case(O, "output == input", "-o model.onnx", lambda r: _cnn_args(r, "-o", r / "model.onnx"),
         message="refusing to overwrite the input model"),
    Case(O, "output == input, other spelling", "-o ./sub/../model.onnx",
         lambda r: _cnn_args(r, "-o", f"{r}/calib/../model.onnx"), message="refusing to overwrite the input model"),
    Case(O, "output is a symlink to the input", "-o link.onnx -> model.onnx", lambda r: _symlinked_output(r),
         message="refusing to overwrite the input model"),
    Case(O, "report == input", "--report model.onnx", lambda r: _cnn_args(r, "--report", r / "model.onnx"),
         message="refusing to overwrite the input model"),
    Case(O, "report == output", "-o q.onnx --report q.onnx",
         lambda r: _cnn_args(r, "-o", r / "q.onnx", "--report", r / "q.onnx"), message="must be different files"),
    Case(O, "output folder missing", "-o missing/q.onnx", lambda r: _cnn_args(r, "-o", r / "missing" / "q.onnx"),
         message="does not exist"),
    Case(O, "output is a folder", "-o calib/ (a directory)", lambda r: _cnn_args(r, "-o", r / "calib"),
         message="is a directory", usage_error=True),
    Case(O, "output is a FIFO / device", "-o pipe.onnx (a named pipe)", lambda r: _fifo_output(r),
         message="not a regular file"),
    Case(O, "unwritable output folder", "-o /proc/q.onnx", lambda r: _cnn_args(r, "-o", "/proc/qcompile-q.onnx"),
         message="cannot save model to /proc/qcompile-q.onnx"),
    # -- interrupts and I/O faults (subprocess)
    Case(S, "Ctrl-C during calibration", "SIGINT while ORT runs the first batch",
         lambda r: _cnn_args(r), exit_code=130, message="interrupted; nothing was written",
         prelude=_SLOW_CALIBRATION, send_signal=signal.SIGINT),
    Case(S, "Ctrl-C while saving", "SIGINT with the output's temporary file open",
         lambda r: _cnn_args(r), exit_code=130, message="interrupted; nothing was written",
         prelude=_SLOW_SAVE, send_signal=signal.SIGINT),
    Case(S, "SIGTERM while saving", "SIGTERM (a pipeline timeout) mid-save",
         lambda r: _cnn_args(r), exit_code=143, message="terminated; nothing was written",
         prelude=_SLOW_SAVE, send_signal=signal.SIGTERM),
    Case(S, "disk full writing the model", "ENOSPC on the model's temporary file",
         lambda r: _cnn_args(r), message="No space left on device", prelude=_disk_full(".onnx")),
    Case(S, "disk full writing the report", "ENOSPC on the report after the model was written",
         lambda r: _cnn_args(r), message="No space left on device", prelude=_disk_full(".report.json")),
    # -- issue 20: never damage a user's files (the output guard), never mislead
    Case(O, "output onto a calibration file", "-o calib/s0.npz", _onto_calib_file("-o"),
         message="refusing to overwrite the calibration file"),
    Case(O, "report onto a calibration file", "--report calib/s0.npz", _onto_calib_file("--report"),
         message="refusing to overwrite the calibration file"),
    Case(O, "output onto the recipe", "--config recipe.toml -o recipe.toml", _recipe_as_output,
         message="refusing to overwrite the recipe"),
    Case(O, "report onto an eval data file", "--eval-data eval/ --report eval/e0.npz", _eval_file_as_report,
         message="refusing to overwrite the eval data file"),
    Case(O, "output onto the model's external data", "-o w.bin --overwrite (the model's external data file)",
         _external_file_as_output, message="refusing to overwrite the external data file"),
    Case(O, "existing output without --overwrite", "model.qdq.onnx already there", _existing_output,
         message="exists; pass --overwrite"),
    Case(M, "external data: the model file itself", "location=model.onnx", _external("model.onnx"),
         message="is the model file itself"),
    Case(C, ".npy header claiming 12 GB", "a.npy header [1000000, 3, 32, 32] float32",
         lambda r: _cnn_calib(r, {"a.npy": _npy_header_only((1_000_000, 3, 32, 32))}), message="over the limit"),
    Case(C, ".npz header claiming 12 GB", "a.npz whose input.npy header is [1000000, 3, 32, 32]",
         lambda r: _cnn_calib(r, {"a.npz": _npz_header_only("input", (1_000_000, 3, 32, 32))}),
         message="over the limit"),
    Case(C, "image header claiming 144 M pixels", "a PNG header of 12000 x 12000 (decompression bomb)",
         lambda r: _cnn_calib(r, {"a.png": _png_header(12000, 12000)}), message="over the limit"),
    Case(C, "16-bit PNG", "a 16-bit grayscale PNG for the RGB model (range kept: x / 65535)",
         lambda r: _cnn_calib(r, {"a.png": _png16_bytes()}), exit_code=0, message="wrote"),
    Case(C, "images for a model without fixed height/width", "PNG for input [N, 3, height, width]",
         _dynamic_image_model, message="--image-size"),
    Case(C, "a sample that never ends", "Loop with trip count INT64_MAX (--sample-time-limit 1)",
         lambda r: _graph_case(r, _endless_loop_model(), None, "--sample-time-limit", "1", "--quantize-classifier"),
         message="per-sample limit"),
    Case(F, "--image-size too large", "--image-size 60000", lambda r: _cnn_args(r, "--image-size", "60000"),
         message="over the limit"),
    Case(F, "empty --calib", "--calib ''", lambda r: [_cnn(r)[0], "--calib", ""], message="--calib is empty"),
    Case(F, "--algorithm without a weight-only preset", "--algorithm awq (preset w8a8)",
         lambda r: _cnn_args(r, "--algorithm", "awq"), message="apply to the weight-only presets only"),
    Case(F, "error text over 300 characters", "--exclude with a 5,000-character name",
         lambda r: _cnn_args(r, "--exclude", "x" * 5000), message="matches no node"),
    Case(G, "float16 model", "every tensor float16 (static INT8 needs float32)", _float_mlp(np.float16,
         TensorProto.FLOAT16), exit_code=0, message="activation input is float16", check=_nothing_quantized),
    Case(G, "float64 model", "every tensor float64", _float_mlp(np.float64, TensorProto.DOUBLE), exit_code=0,
         message="activation input is float64", check=_nothing_quantized),
    Case(G, "IR 3 model, initializers as graph inputs", "ir_version 3, opset 9, weights listed in graph.input",
         lambda r: _graph_case(r, _ir3_model()), exit_code=0, message="wrote", check=_quantized(1)),
    Case(G, "sparse initializer", "fc0's weight as a SparseTensorProto",
         lambda r: _graph_case(r, _sparse_weight_model()), exit_code=0, message="wrote", check=_quantized(1)),
    Case(T, "report -o onto the model it describes", "qcompile report r.json -o model.onnx", _report_over_model,
         message="refusing to overwrite the model", tail=()),
    Case(T, "report with wrong field types", '{"summary": {}, "nodes": "x"}',
         lambda r: ["report", _report_file(r, {"summary": {}, "nodes": "x"})], message="report.nodes must be an array",
         tail=()),
    Case(T, "report nested 100,000 deep", '{"summary": {}, "x": [[[[...]]]]}',
         lambda r: ["report", _report_file(r, '{"summary": {}, "x": ' + "[" * 100_000 + "]" * 100_000 + "}")],
         message="nests arrays or objects deeper", tail=()),
    Case(T, "compare models with different inputs", "reference takes x, candidate takes z",
         _compare_different_inputs, message="take different inputs", tail=()),
    Case(S, "SIGHUP while saving", "SIGHUP (terminal closed) mid-save", lambda r: _cnn_args(r), exit_code=129,
         message="hung up; nothing was written", prelude=_SLOW_SAVE, send_signal=signal.SIGHUP),
    Case(S, "Ctrl-C during start-up", "SIGINT while the compiler's modules import", _startup, exit_code=130,
         message="interrupted during start-up", prelude=_SLOW_IMPORT, send_signal=signal.SIGINT, launcher=True),
]


# ------------------------------------------------------------------------------------------------ tests


def test_at_least_30_classes_over_every_bullet():
    assert len({c.name for c in CASES}) == len(CASES) >= 30
    assert {c.group for c in CASES} == {M, D, G, C, F, O, S, T}


@pytest.mark.parametrize("case", CASES, ids=[re.sub(r"\W+", "-", c.name).strip("-") for c in CASES])
def test_bad_input(case: Case, tmp_path: Path):
    outcome = run_case(case, tmp_path)
    assert_outcome(case, outcome, tmp_path)
