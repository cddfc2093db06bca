"""A Llama-shaped causal LM of any depth with random weights, written layer by layer to external data.

    python models/llama_shaped.py OUT_DIR --layers 32 [--dim 2048 --ffn 5632 --heads 16 --kv-heads 4 --vocab 32000]

writes OUT_DIR/llama.onnx (input_ids int64 [1, S] -> logits [1, S, V], opset 18, no KV cache) with every weight
in OUT_DIR/llama.onnx.data, and OUT_DIR/calib/*.npz token windows. The defaults are TinyLlama's widths with 32
layers: 1.58 B parameters (6.3 GB of float32). Each tensor is drawn, written and dropped before the next, so
memory stays at one weight matrix whatever the depth. The graph is the one of models/smollm2_from_gguf.py
(RMSNorm, rotary embeddings, grouped-query attention with a causal mask, SwiGLU) without tied embeddings.
Weights are N(0, 1/fan_in) (norm weights 1), so activations keep their scale through the depth.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

logger = logging.getLogger("llama_shaped")


class _Writer:
    """Initializers whose bytes go straight to one external data file."""

    def __init__(self, data_path: Path, rng: np.random.Generator) -> None:
        self.data_path, self.rng = data_path, rng
        self.file = open(data_path, "wb")
        self.initializers: list[TensorProto] = []
        self.parameters = 0

    def tensor(self, name: str, array: np.ndarray) -> str:
        array = np.ascontiguousarray(array)
        if array.nbytes < 1024:
            self.initializers.append(numpy_helper.from_array(array, name))
            return name
        offset = self.file.tell()
        self.file.write(array.tobytes())
        tensor = TensorProto(name=name, data_type=helper.np_dtype_to_tensor_dtype(array.dtype), dims=array.shape)
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", self.data_path.name), ("offset", str(offset)), ("length", str(array.nbytes))):
            tensor.external_data.add(key=key, value=value)
        self.initializers.append(tensor)
        return name

    def weight(self, name: str, fan_in: int, fan_out: int) -> str:
        self.parameters += fan_in * fan_out
        values = self.rng.standard_normal((fan_in, fan_out), dtype=np.float32) / np.float32(np.sqrt(fan_in))
        return self.tensor(name, values)

    def close(self) -> None:
        self.file.close()


def llama_shaped(out_dir: Path, *, layers: int, dim: int = 2048, ffn: int = 5632, heads: int = 16,
                 kv_heads: int = 4, vocab: int = 32000, seq: int = 64, seed: int = 0) -> tuple[Path, int]:
    """Write the model (module docstring); returns (model path, parameter count)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "llama.onnx"
    w = _Writer(out_dir / "llama.onnx.data", np.random.default_rng(seed))
    head_dim, group = dim // heads, heads // kv_heads
    nodes: list[onnx.NodeProto] = []
    count = [0]

    def op(kind: str, inputs: list[str], name: str | None = None, **attrs) -> str:
        count[0] += 1
        name = name or f"{kind}_{count[0]}"
        nodes.append(helper.make_node(kind, inputs, [f"{name}_out"], name=name, **attrs))
        return f"{name}_out"

    const = {}

    def c(name: str, value) -> str:
        if name not in const:
            const[name] = w.tensor(name, np.asarray(value))
        return const[name]

    w.parameters += vocab * dim
    x = op("Gather", [w.tensor("embed.W", w.rng.standard_normal((vocab, dim), dtype=np.float32)), "input_ids"],
           name="embed", axis=0)
    inv_freq = 10000.0 ** (-np.arange(0, head_dim, 2) / head_dim)
    angles = np.arange(seq)[:, None] * inv_freq[None, :]
    cos = c("rope_cos", np.cos(angles).astype(np.float32).reshape(1, seq, 1, head_dim // 2, 1))
    sin = c("rope_sin", np.sin(angles).astype(np.float32).reshape(1, seq, 1, head_dim // 2, 1))
    mask = c("causal_mask", np.triu(np.full((seq, seq), -1e9, np.float32), 1))

    def rms_norm(t: str, name: str) -> str:
        mean = op("ReduceMean", [op("Mul", [t, t]), c("axes_last", np.array([-1], np.int64))], keepdims=1)
        normed = op("Div", [t, op("Sqrt", [op("Add", [mean, c("eps", np.float32(1e-5))])])])
        return op("Mul", [normed, w.tensor(f"{name}.weight", np.ones(dim, np.float32))])

    def linear(t: str, name: str, fan_in: int, fan_out: int) -> str:
        return op("MatMul", [t, w.weight(f"{name}.W", fan_in, fan_out)], name=name)

    def rope(t: str, n: int) -> str:
        pairs = op("Reshape", [t, c(f"pairs{n}", np.array([1, seq, n, head_dim // 2, 2]))])
        even = op("Slice", [pairs, c("s0", np.array([0])), c("s1", np.array([1])), c("ax4", np.array([4]))])
        odd = op("Slice", [pairs, c("s1", np.array([1])), c("s2", np.array([2])), c("ax4", np.array([4]))])
        first = op("Sub", [op("Mul", [even, cos]), op("Mul", [odd, sin])])
        second = op("Add", [op("Mul", [even, sin]), op("Mul", [odd, cos])])
        merged = op("Reshape", [op("Concat", [first, second], axis=4), c(f"heads{n}", np.array([1, seq, n, head_dim]))])
        return op("Transpose", [merged], perm=[0, 2, 1, 3])

    def repeat(t: str) -> str:
        t5 = op("Expand", [op("Unsqueeze", [t, c("ax2", np.array([2]))]),
                           c("rep", np.array([1, kv_heads, group, seq, head_dim]))])
        return op("Reshape", [t5, c("rep_shape", np.array([1, heads, seq, head_dim]))])

    for i in range(layers):
        p = f"layers.{i}"
        h = rms_norm(x, f"{p}.attn_norm")
        q = rope(linear(h, f"{p}.q_proj", dim, dim), heads)
        k = rope(linear(h, f"{p}.k_proj", dim, kv_heads * head_dim), kv_heads)
        v = op("Transpose", [op("Reshape", [linear(h, f"{p}.v_proj", dim, kv_heads * head_dim),
                                            c("shape_v", np.array([1, seq, kv_heads, head_dim]))])], perm=[0, 2, 1, 3])
        scores = op("MatMul", [q, op("Transpose", [repeat(k)], perm=[0, 1, 3, 2])])
        probs = op("Softmax", [op("Add", [op("Mul", [scores, c("scale", np.float32(head_dim ** -0.5))]), mask])],
                   axis=-1)
        context = op("Reshape", [op("Transpose", [op("MatMul", [probs, repeat(v)])], perm=[0, 2, 1, 3]),
                                 c("shape_model", np.array([1, seq, dim]))])
        x = op("Add", [x, linear(context, f"{p}.o_proj", dim, dim)])
        h = rms_norm(x, f"{p}.ffn_norm")
        gate = linear(h, f"{p}.gate_proj", dim, ffn)
        act = op("Mul", [op("Mul", [gate, op("Sigmoid", [gate])]), linear(h, f"{p}.up_proj", dim, ffn)])
        x = op("Add", [x, linear(act, f"{p}.down_proj", ffn, dim)])
        logger.info("layer %d/%d written", i + 1, layers)
    logits = linear(rms_norm(x, "final_norm"), "lm_head", dim, vocab)
    nodes[-1].output[0] = "logits"
    w.close()
    graph = helper.make_graph(nodes, "llama_shaped",
                              [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, seq])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, seq, vocab])],
                              w.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    calib = out_dir / "calib"
    calib.mkdir(exist_ok=True)
    rng = np.random.default_rng(seed + 1)
    for i in range(8):
        np.savez(calib / f"window_{i:04d}.npz", input_ids=rng.integers(0, vocab, (1, seq)).astype(np.int64))
    return path, w.parameters


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--ffn", type=int, default=5632)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--seq", type=int, default=64)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    path, parameters = llama_shaped(args.out_dir, layers=args.layers, dim=args.dim, ffn=args.ffn, heads=args.heads,
                                    kv_heads=args.kv_heads, vocab=args.vocab, seq=args.seq)
    logger.info("wrote %s: %.3f B parameters", path, parameters / 1e9)
    return 0


if __name__ == "__main__":
    sys.exit(main())
