"""qcompile compare: fidelity and latency of a candidate model against a reference, side by side.

    qcompile compare fp32.onnx q.onnx --data eval/

Both models run on the same items of --data (a folder in any --calib format, or an .npz of arrays keyed by
input name, split along axis 0) with ORT's CPU EP and full graph optimisation. Fidelity per output as in
qcompile/accuracy/fidelity.py (cosine, SQNR, relative error, max |error|, top-1 agreement for logits); latency
batch 1, interleaved rounds, one thread by default (qcompile/accuracy/latency.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from qcompile.config import ImageOptions
from qcompile.errors import UnsupportedModelError
from qcompile.data import InputSpec, load_eval_data, model_input_specs
from qcompile.accuracy.fidelity import compare_outputs, run_outputs
from qcompile.accuracy.output_roles import infer_output_roles
from qcompile.accuracy.latency import measure_latency
from qcompile.io import load_model


def check_same_inputs(reference: Sequence[InputSpec], candidate: Sequence[InputSpec]) -> None:
    """Both models take the same inputs (names, dtypes, ranks), or a one-line error saying how they differ."""
    ref, cand = {s.name: s for s in reference}, {s.name: s for s in candidate}
    if set(ref) != set(cand):
        raise UnsupportedModelError(f"the models take different inputs: reference {sorted(ref)}, candidate "
                                    f"{sorted(cand)}; compare needs one feed for both")
    for name, spec in ref.items():
        other = cand[name]
        ranks = (None if spec.shape is None else len(spec.shape), None if other.shape is None else len(other.shape))
        if spec.dtype != other.dtype or (None not in ranks and ranks[0] != ranks[1]):
            raise UnsupportedModelError(f"input '{name}' differs: reference {spec.dtype} rank {ranks[0]}, candidate "
                                        f"{other.dtype} rank {ranks[1]}")


def compare_models(reference: str | Path, candidate: str | Path, data: Any, *, samples: int = 100, rounds: int = 5,
                   runs: int = 20, threads: int = 1, image: ImageOptions = ImageOptions()) -> dict[str, Any]:
    """Fidelity of ``candidate`` vs ``reference`` on ``data`` and both models' latency and size."""
    ref, cand = load_model(reference), load_model(candidate)
    check_same_inputs(model_input_specs(ref.model), model_input_specs(cand.model))
    evaluation = load_eval_data(data, model_input_specs(ref.model), samples, image=image)
    ref_names, ref_out = run_outputs(ref.model, evaluation.items)
    cand_names, cand_out = run_outputs(cand.model, evaluation.items)
    missing = [n for n in ref_names if n not in cand_names]
    if missing:
        raise UnsupportedModelError(f"the candidate model lacks output(s) {missing} of the reference")
    fidelity = compare_outputs(ref_out, [{n: o[n] for n in ref_names} for o in cand_out],
                               roles=infer_output_roles(ref.model))
    latency = measure_latency({"reference": ref.model, "candidate": cand.model}, evaluation.items[0],
                              rounds=rounds, runs=runs, threads=threads)
    return {
        "reference": {"path": str(reference), "bytes": ref.size_bytes, **latency["reference"]},
        "candidate": {"path": str(candidate), "bytes": cand.size_bytes, **latency["candidate"]},
        "size_ratio": cand.size_bytes / max(ref.size_bytes, 1),
        "data": {"source": evaluation.description, "items": len(evaluation.items)},
        "fidelity": fidelity.as_json(),
    }


def format_comparison(result: dict[str, Any]) -> str:
    ref, cand = result["reference"], result["candidate"]
    lines = [f"data: {result['data']['source']} ({result['data']['items']} item(s))",
             f"{'':<12}{'reference':>16}{'candidate':>16}",
             f"{'size':<12}{ref['bytes']:>16,}{cand['bytes']:>16,}   ratio {result['size_ratio']:.3f}",
             f"{'latency ms':<12}{ref['median_ms']:>16.3f}{cand['median_ms']:>16.3f}   ratio {cand['ratio']:.3f} "
             f"(batch 1, {cand['threads']} thread, median of {cand['rounds']} rounds x {cand['runs']} runs)"]
    for name, entry in result["fidelity"]["outputs"].items():
        text = (f"output {name}: cosine mean {entry['cosine_mean']:.5f} (min {entry['cosine_min']:.5f}), "
                f"SQNR {entry['sqnr_db'] if isinstance(entry['sqnr_db'], str) else format(entry['sqnr_db'], '.2f')} dB, "
                f"relative error {entry['relative_error']:.5f}, max |error| {entry['max_abs_error']:.4g}")
        if "top1_agreement" in entry:
            text += f", top-1 agreement {entry['top1_agreement']:.4f}"
        lines.append(text)
    return "\n".join(lines)
