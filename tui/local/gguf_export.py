"""Fine-tuned weights back into a GGUF, so llama.cpp serves a fine-tuned model as fast as its
base.

A fine-tune of a GGUF base is trained on an fp32 transformers copy of that GGUF. The result
is written here as a new GGUF: every metadata field of the base (tokenizer, merges, chat
template, hyperparameters) and every untouched tensor is copied byte for byte; each trained
tensor becomes ``dequantize(base tensor) + delta``, stored as Q8_0.

Why merged Q8_0. Measured on SmolLM2-135M-Instruct Q4_1 after a LoRA fine-tune (400 git
examples, 3 epochs; adapters on the top 15 layers for this comparison), scored on the 54
held-out requests of data/git_requests.json with llama.cpp: greedy exact match, the mean
negative log-likelihood of the reference answer's tokens, and decode speed (64 tokens, one
thread, all variants interleaved on a shared machine, load average ~4):

    variant                              tok/s   exact   ref. NLL   file
    base (no fine-tune)                   73.2    0/54     2.79      98 MB
    merged, trained tensors Q8_0          70.7    6/54     1.014    122 MB   <- chosen
    merged, trained tensors F16           62.9    6/54     1.008    171 MB
    merged, requantized to Q4_1           74.1    0/54     2.54      98 MB
    base + LoRA adapter GGUF (F32)        63.1    6/54     1.011     10 MB (+ base)

With the default (adapters on all 30 layers: every projection Q8_0, 145 MB, 12/54 exact),
2 threads, load ~3, median of 10 runs: base 101.9 tok/s, fine-tuned 96.8 (0.95x).

- Requantising a trained tensor to the base's Q4_1 erases the fine-tune. The LoRA update is
  small (its RMS 0.3-0.5% of the weights' RMS in those runs) while Q4_1's step within a
  32-weight block is 1/15 of the block's range: what requantising changes correlates with
  the update at only ~0.07, i.e. it is rounding noise, and the answers are the base's.
- Q8_0 (step 1/127 of a block's largest weight) keeps the gain, as F16 and the adapter do:
  its rounding error is 1-2x the update's RMS, but random, while the update is low-rank and
  acts coherently. It runs at 95-97% of the base's speed: llama.cpp's 8-bit dot product is
  nearly as fast as its 4-bit one here; F16 matmuls and the adapter's two extra matmuls per
  projection cost ~14%. (Q5_0/Q5_1 would be smaller; not measured.)
- A full fine-tune (the default since) changes every tensor, so its file is all Q8_0: 145 MB
  against the base's 98, and it decodes slower than its base (0.73x in one run under load).
  Smaller types lose it again. The 54-example pool student requantized with llama.cpp,
  greedy on 80 held-out train requests: Q8_0 9 exact; Q5_0 (105 MB) 8, but only 41 of the
  80 answers the same; Q5_1 (112 MB) 4; Q4_1 (98 MB) 2, with 3 answers the same. So Q8_0
  stays: a fine-tune served a little slower beats one served as fast that has forgotten.
- A merged file stands alone: the registry serves it like any GGUF, with no base to find.

llama.cpp's converter (convert_hf_to_gguf.py) permutes the rows of the q and k projections
of Llama-family models (``permute_qk``: HF rotates the two halves of each head, llama.cpp
adjacent pairs) and transformers undoes it on load, so a delta computed in HF layout is
permuted the same way before it is added. Other families (Qwen2, Qwen3, Phi-3, Gemma…) are
converted without it and have tensors of their own (q/k/v biases, q/k norms, fused
projections): they are refused (`ExportUnsupported`) until a round-trip test like
tests/local/test_gguf_export.py covers them, since a wrong export would serve a broken
fine-tune without a word. Tensor names come from the gguf package's map
(``gguf.get_tensor_name_map``), the table llama.cpp's converter itself uses.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

# GGUF architectures (general.architecture) a fine-tune can be exported into — those a
# round-trip test covers — and whether llama.cpp's converter permutes their q/k rows
# (LlamaModel.modify_tensors does, for the "llama" architecture).
PERMUTES_QK = {"llama": True}

# Types llama.cpp computes with directly; a trained tensor whose base is one of these keeps it.
_FLOAT_TYPES = ("F32", "F16", "BF16")


def permute_qk(w: np.ndarray, n_head: int, n_head_kv: int) -> np.ndarray:
    """llama.cpp's converter permutation of q/k projection rows (HF layout -> GGUF layout).

    HF's Llama rotates the two halves of each head; llama.cpp rotates adjacent pairs, so
    convert_hf_to_gguf.py interleaves the halves of every head's rows. transformers undoes it
    when it loads a GGUF, so anything computed in HF layout must be permuted back."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def gguf_tensor_name(hf_name: str, arch: str = "llama", n_blocks: int = 64) -> str:
    """The GGUF name of an HF parameter of an `arch` model with `n_blocks` layers, from the
    gguf package's map (KeyError for one llama.cpp does not have)."""
    name = _name_map(arch, n_blocks).get_name(hf_name, try_suffixes=(".weight", ".bias"))
    if name is None:
        raise KeyError(hf_name)
    return str(name)


@lru_cache(maxsize=4)
def _name_map(arch: str, n_blocks: int) -> Any:
    import gguf

    by_name = {name: key for key, name in gguf.MODEL_ARCH_NAMES.items()}
    return gguf.get_tensor_name_map(by_name[arch], n_blocks)


class ExportUnsupported(ValueError):
    """The base GGUF's architecture is not one a fine-tune can be written back into."""


def check_exportable(base: Path) -> str:
    """The base GGUF's architecture when a fine-tune of it can be exported; else raises
    ExportUnsupported saying why and what to do instead."""
    import gguf

    return _architecture(gguf.GGUFReader(str(base)), Path(base))


def _architecture(reader: Any, base: Path) -> str:
    arch = str(reader.fields["general.architecture"].contents())
    if arch not in PERMUTES_QK:
        raise ExportUnsupported(
            f"{base.name} is a {arch!r} model: a fine-tune is written back to GGUF only for "
            "the Llama architecture (SmolLM2, Llama, Mistral…), and a "
            f"{arch!r} model's weights are laid out otherwise, so its export would be wrong. "
            "Fine-tune a Llama-architecture GGUF, or add the model as a transformers folder "
            "(its fine-tune is then saved as one)."
        )
    return arch


def _heads(reader: Any, arch: str) -> tuple[int, int, int]:
    """(attention heads, key/value heads, blocks) from the GGUF's metadata."""
    fields = reader.fields
    n_head = int(fields[f"{arch}.attention.head_count"].contents())
    kv = fields.get(f"{arch}.attention.head_count_kv")
    n_blocks = int(fields[f"{arch}.block_count"].contents())
    return n_head, int(kv.contents()) if kv is not None else n_head, n_blocks


def _to_gguf_layout(arch: str, gg_name: str, w: np.ndarray, n_head: int, n_kv: int) -> np.ndarray:
    if not PERMUTES_QK[arch]:
        return w
    if gg_name.endswith(".attn_q.weight"):
        return permute_qk(w, n_head, n_head)
    if gg_name.endswith(".attn_k.weight"):
        return permute_qk(w, n_head, n_kv)
    return w


def _copy_metadata(reader: object, writer: object, name: str | None, skip: tuple[str, ...]) -> None:
    import gguf

    for field in reader.fields.values():  # type: ignore[attr-defined]
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue  # written by GGUFWriter itself
        if field.name in skip or (name is not None and field.name == gguf.Keys.General.NAME):
            continue
        val_type = field.types[0]
        sub_type = field.types[-1] if val_type == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), val_type, sub_type=sub_type)  # type: ignore[attr-defined]
    if name is not None:
        writer.add_name(name)  # type: ignore[attr-defined]


def export_merged_gguf(
    base: Path,
    out: Path,
    deltas: Mapping[str, np.ndarray],
    *,
    trained_type: str = "Q8_0",
    name: str | None = None,
) -> Path:
    """Write ``base`` with ``deltas`` (HF parameter name -> weight change, HF layout) added.

    Changed tensors that were quantized in the base are stored as ``trained_type`` ("Q8_0",
    "F16", "F32", or "same" to requantize to the base's own type where gguf can); float
    tensors (norms, F16 weights) keep their type. Written to a temporary name and renamed,
    so a reader never sees half a file."""
    import gguf

    reader = gguf.GGUFReader(str(base))
    arch = _architecture(reader, Path(base))
    n_head, n_kv, n_blocks = _heads(reader, arch)
    by_gguf: dict[str, np.ndarray] = {}
    for hf_name, delta in deltas.items():
        gg = gguf_tensor_name(hf_name, arch, n_blocks)
        delta = np.asarray(delta, dtype=np.float32)
        by_gguf[gg] = _to_gguf_layout(arch, gg, delta, n_head, n_kv)
    names = {t.name for t in reader.tensors}
    if "output.weight" in by_gguf and "output.weight" not in names:
        # Tied embeddings: the output layer is token_embd, whose delta is already there.
        del by_gguf["output.weight"]
    missing = set(by_gguf) - names
    if missing:
        raise KeyError(f"not in {base.name}: {sorted(missing)[:5]}")

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    writer = gguf.GGUFWriter(str(tmp), arch)
    _copy_metadata(reader, writer, name, skip=())
    for t in reader.tensors:
        if t.name not in by_gguf:
            writer.add_tensor(t.name, t.data, raw_shape=t.data.shape, raw_dtype=t.tensor_type)
            continue
        weight = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        weight = weight + by_gguf[t.name].reshape(weight.shape)
        kind = _output_type(t.tensor_type, trained_type)
        _add_float_tensor(writer, t.name, weight, kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(tmp, out)
    return out


def _output_type(base_type: object, trained_type: str) -> object:
    import gguf

    if base_type.name in _FLOAT_TYPES:  # type: ignore[attr-defined]
        return base_type
    if trained_type == "same":
        try:
            gguf.quants.quantize(np.zeros((1, 256), np.float32), base_type)  # type: ignore[arg-type]
            return base_type
        except NotImplementedError:
            return gguf.GGMLQuantizationType.Q8_0
    return getattr(gguf.GGMLQuantizationType, trained_type)


def _add_float_tensor(writer: object, name: str, weight: np.ndarray, kind: object) -> None:
    import gguf

    q = gguf.GGMLQuantizationType
    if kind == q.F32:
        writer.add_tensor(name, weight)  # type: ignore[attr-defined]
    elif kind == q.F16:
        writer.add_tensor(name, weight.astype(np.float16))  # type: ignore[attr-defined]
    else:
        data = gguf.quants.quantize(weight, kind)  # type: ignore[arg-type]
        writer.add_tensor(name, data, raw_shape=data.shape, raw_dtype=kind)  # type: ignore[attr-defined]


def export_lora_gguf(
    base: Path,
    out: Path,
    lora: Mapping[str, tuple[np.ndarray, np.ndarray]],
    alpha: float,
    *,
    dtype: str = "F32",
) -> Path:
    """Write a llama.cpp LoRA adapter (``Llama(model_path=base, lora_path=out)``).

    ``lora`` maps an HF parameter name to its (A, B) matrices, A (r, in) and B (out, r), as
    peft stores them; llama.cpp scales B @ A by alpha / r like peft does. Only B's rows are
    permuted for q/k (A acts on the input side, which the permutation leaves alone)."""
    import gguf

    reader = gguf.GGUFReader(str(base))
    arch = _architecture(reader, Path(base))
    n_head, n_kv, n_blocks = _heads(reader, arch)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    writer = gguf.GGUFWriter(str(tmp), arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
    kind = getattr(gguf.GGMLQuantizationType, dtype)
    for hf_name, (a, b) in lora.items():
        gg = gguf_tensor_name(hf_name, arch, n_blocks)
        b_gguf = _to_gguf_layout(arch, gg, np.asarray(b, dtype=np.float32), n_head, n_kv)
        _add_float_tensor(writer, gg + ".lora_a", np.asarray(a, dtype=np.float32), kind)
        _add_float_tensor(writer, gg + ".lora_b", b_gguf, kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(tmp, out)
    return out
