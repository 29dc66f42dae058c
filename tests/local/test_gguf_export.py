"""Weights written back into a GGUF must mean in llama.cpp what they meant in transformers.

The tiny model in F32 makes the comparison exact: transformers' logits for a weight change
against llama.cpp's logits for the exported file. A wrong q/k permutation would show here as
a large logit difference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.helpers.tiny_model import build_tiny_gguf, build_tiny_qwen2_gguf
from tui.local.gguf_export import (
    ExportUnsupported,
    check_exportable,
    export_lora_gguf,
    export_merged_gguf,
    gguf_tensor_name,
    permute_qk,
)

PROMPT_IDS = [1, 494, 201, 458, 471, 281, 261, 267, 91, 261, 300, 301, 302]
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def llama_logits(path: Path, lora: Path | None = None) -> np.ndarray:
    import llama_cpp

    kwargs = {"lora_path": str(lora)} if lora else {}
    llm = llama_cpp.Llama(
        str(path), n_ctx=128, logits_all=True, verbose=False, n_threads=1, **kwargs
    )
    llm.eval(PROMPT_IDS)
    return np.array(llm.scores[: len(PROMPT_IDS)])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The tiny F32 GGUF, transformers' view of it, and a random rank-4 change of every
    projection (with the logits transformers computes before and after it)."""
    import torch
    from transformers import AutoModelForCausalLM

    folder = tmp_path_factory.mktemp("export")
    base = build_tiny_gguf(folder / "tiny.gguf", quant="F32")
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=base.name, dtype=torch.float32)
    gen = torch.Generator().manual_seed(0)
    lora: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    deltas: dict[str, np.ndarray] = {}
    state = model.state_dict()
    alpha, rank = 8.0, 4
    for name, weight in state.items():
        if any(p in name for p in PROJECTIONS):
            a = torch.randn(rank, weight.shape[1], generator=gen) * 0.3
            b = torch.randn(weight.shape[0], rank, generator=gen) * 0.3
            lora[name] = (a.numpy(), b.numpy())
            deltas[name] = (b @ a * (alpha / rank)).numpy()
    ids = torch.tensor([PROMPT_IDS])
    with torch.no_grad():
        before = model(ids).logits[0].numpy()
        for name, delta in deltas.items():
            state[name].add_(torch.from_numpy(delta))
        after = model(ids).logits[0].numpy()
    return {
        "folder": folder,
        "base": base,
        "lora": lora,
        "alpha": alpha,
        "deltas": deltas,
        "before": before,
        "after": after,
    }


def test_the_tiny_gguf_means_what_transformers_means(tiny: dict) -> None:
    assert np.abs(llama_logits(tiny["base"]) - tiny["before"]).max() < 1e-3


def test_merged_deltas_match_transformers(tiny: dict) -> None:
    out = export_merged_gguf(tiny["base"], tiny["folder"] / "merged.gguf", tiny["deltas"])
    effect = np.abs(tiny["after"] - tiny["before"]).max()
    assert effect > 0.5  # the change is large enough to notice a wrong permutation
    assert np.abs(llama_logits(out) - tiny["after"]).max() < 2e-3


def test_a_lora_adapter_gguf_matches_the_merged_weights(tiny: dict) -> None:
    adapter = export_lora_gguf(
        tiny["base"], tiny["folder"] / "adapter.gguf", tiny["lora"], tiny["alpha"]
    )
    assert np.abs(llama_logits(tiny["base"], lora=adapter) - tiny["after"]).max() < 2e-3


def test_without_the_permutation_the_logits_would_differ(tiny: dict) -> None:
    # Guards the test itself: q/k deltas given in the wrong layout are detectably wrong.
    wrong = {
        name: (
            permute_qk(d, 4, 4) if "q_proj" in name else permute_qk(d, 4, 2)
            if "k_proj" in name else d
        )
        for name, d in tiny["deltas"].items()
    }  # fmt: skip
    out = export_merged_gguf(tiny["base"], tiny["folder"] / "wrong.gguf", wrong)
    assert np.abs(llama_logits(out) - tiny["after"]).max() > 1e-2


def test_a_quantized_base_keeps_untouched_tensors_and_stores_trained_ones_as_q8_0(
    tmp_path: Path,
) -> None:
    import gguf

    base = build_tiny_gguf(tmp_path / "tiny.Q4_1.gguf", quant="Q4_1")
    zero = {"model.layers.1.self_attn.q_proj.weight": np.zeros((64, 64), np.float32)}
    out = export_merged_gguf(base, tmp_path / "out.gguf", zero, name="tiny ft")
    before = {t.name: t for t in gguf.GGUFReader(str(base)).tensors}
    reader = gguf.GGUFReader(str(out))
    after = {t.name: t for t in reader.tensors}
    assert after.keys() == before.keys()
    assert after["blk.1.attn_q.weight"].tensor_type.name == "Q8_0"
    for name, t in before.items():
        if name != "blk.1.attn_q.weight":
            assert after[name].tensor_type == t.tensor_type
            assert np.array_equal(after[name].data, t.data)
    assert reader.fields["general.name"].contents() == "tiny ft"
    assert reader.fields["tokenizer.chat_template"].contents().startswith("{% for message")
    # A zero change, requantized to Q8_0, still gives the base's answers.
    assert np.argmax(llama_logits(out), -1).tolist() == np.argmax(llama_logits(base), -1).tolist()


def test_tensor_names() -> None:
    assert gguf_tensor_name("model.layers.3.mlp.down_proj.weight") == "blk.3.ffn_down.weight"
    assert gguf_tensor_name("model.embed_tokens.weight") == "token_embd.weight"
    assert gguf_tensor_name("lm_head.weight") == "output.weight"
    assert gguf_tensor_name("model.layers.0.self_attn.q_proj.weight") == "blk.0.attn_q.weight"
    with pytest.raises(KeyError):
        gguf_tensor_name("model.layers.3.mlp.unknown.weight")


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_qwen2_gguf(tmp_path_factory.mktemp("qwen2") / "tiny-qwen2.gguf")


def test_the_tiny_qwen2_gguf_is_a_real_one(qwen2: Path) -> None:
    # llama.cpp and transformers both load it and agree on its logits: what export refuses
    # is a valid model of another architecture, not a broken file.
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        qwen2.parent, gguf_file=qwen2.name, dtype=torch.float32
    )
    assert model.config.model_type == "qwen2"
    with torch.no_grad():
        hf = model(torch.tensor([PROMPT_IDS])).logits[0].numpy()
    assert np.abs(llama_logits(qwen2) - hf).max() < 1e-3


def test_export_refuses_another_architecture_with_a_clear_message(
    qwen2: Path, tmp_path: Path
) -> None:
    delta = {"model.layers.0.self_attn.q_proj.weight": np.zeros((64, 64), np.float32)}
    out = tmp_path / "out"
    for export in (
        lambda: check_exportable(qwen2),
        lambda: export_merged_gguf(qwen2, out / "merged.gguf", delta),
        lambda: export_lora_gguf(qwen2, out / "adapter.gguf", {}, 8.0),
    ):
        with pytest.raises(ExportUnsupported) as refused:
            export()
        message = str(refused.value)
        assert "tiny-qwen2.gguf is a 'qwen2' model" in message
        assert "only for the Llama architecture" in message
        assert "transformers folder" in message  # what to do instead
    assert not out.exists()  # nothing half-written


def test_the_trainer_refuses_it_before_converting_or_training(qwen2: Path, tmp_path: Path) -> None:
    from tui.local.trainer import Spec, TrainingError, load_base

    spec = Spec(
        base_model_id="tiny-qwen2",
        base_kind="gguf",
        base_path=qwen2,
        training_file=tmp_path / "train.jsonl",
        validation_file=None,
        output_dir=tmp_path / "out",
        cache_dir=tmp_path / "cache",
    )
    with pytest.raises(TrainingError) as refused:
        load_base(spec)
    assert refused.value.code == "unsupported_model"
    assert "'qwen2' model" in refused.value.message
    assert not (tmp_path / "cache").exists()  # refused before the conversion
