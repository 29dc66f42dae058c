"""A tiny, randomly initialised Llama model with a real tokenizer, built in a second.

Tests use it wherever the real SmolLM2 would make them slow: it has SmolLM2's shape of
things (Llama architecture, grouped-query attention, tied embeddings, a byte-level BPE
tokenizer with <|im_start|>/<|im_end|>, eos == pad == <|im_end|>, a ChatML chat template)
at a size that trains in seconds. No download: the tokenizer is trained here on generated
git-ish text, the weights come from a seeded random init.

``build_tiny_gguf`` writes the same kind of model as a llama.cpp GGUF (via the ``gguf``
package, with llama.cpp's q/k row permutation) so the GGUF paths can be tested fast too;
``build_tiny_qwen2_gguf`` writes a tiny Qwen2 one, an architecture export must refuse.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# SmolLM2's template with a shorter default system prompt.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a tiny test model.<|im_end|>\n' }}"
    "{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0, 1, 2 as in SmolLM2

_BRANCHES = ["main", "dev", "feature-login", "bugfix-42", "release-1.0", "docs", "hotfix"]
_FILES = ["README.md", "app.py", "setup.cfg", "src/main.c", "notes.txt", "index.html"]
_REMOTES = ["origin", "upstream", "fork"]


def git_pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """n (request, command) pairs in the style of the shipped git dataset."""
    rng = random.Random(seed)
    makers = [
        lambda b, f, r: (f"Create a new branch called '{b}'.", f"git checkout -b {b}"),
        lambda b, f, r: (f"Switch to the {b} branch.", f"git switch {b}"),
        lambda b, f, r: (f"Delete the local branch {b}.", f"git branch -d {b}"),
        lambda b, f, r: (f"Stage the file {f}.", f"git add {f}"),
        lambda b, f, r: (f"Show the history of {f}.", f"git log -- {f}"),
        lambda b, f, r: (f"Push {b} to {r}.", f"git push {r} {b}"),
        lambda b, f, r: (f"Fetch everything from {r}.", f"git fetch {r}"),
        lambda b, f, r: (f"Merge {b} into the current branch.", f"git merge {b}"),
        lambda b, f, r: ("Show the status of the working tree.", "git status"),
        lambda b, f, r: (f"Unstage {f}.", f"git restore --staged {f}"),
    ]
    pairs = []
    for _ in range(n):
        make = rng.choice(makers)
        pairs.append(make(rng.choice(_BRANCHES), rng.choice(_FILES), rng.choice(_REMOTES)))
    return pairs


def _corpus() -> list[str]:
    lines = []
    for request, command in git_pairs(400):
        lines += [request, command]
    lines += ["You are a helpful assistant that turns requests into git commands."] * 5
    lines += ["system", "user", "assistant", "Only reply with the command."]
    return lines


def build_tokenizer(vocab_size: int = 512):  # -> PreTrainedTokenizerFast
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
        chat_template=CHATML_TEMPLATE,
        model_max_length=512,
    )


def build_tiny_model(dir: Path, seed: int = 0, n_layers: int = 2, hidden: int = 64) -> Path:
    """Write a tiny LlamaForCausalLM + tokenizer to ``dir`` and return ``dir``."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,  # grouped-query attention like SmolLM2 (9 heads, 3 kv)
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=2)
    model.save_pretrained(dir)
    tokenizer.save_pretrained(dir)
    return dir


def build_tiny_gguf(path: Path, seed: int = 0, quant: str = "F32") -> Path:
    """Write the tiny model as a llama GGUF file that llama.cpp and transformers both load.

    ``quant`` is the type of the 2-D weights: "F32", "F16", "Q8_0" or "Q4_1" (the last is
    the default SmolLM2 file's type; embeddings stay Q8_0 then, as a stand-in for its Q8_0
    token_embd). Norms are always F32.
    """
    import json
    import tempfile

    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    from tui.local.gguf_export import permute_qk

    path = Path(path)
    with tempfile.TemporaryDirectory() as tmp:
        hf = build_tiny_model(Path(tmp), seed=seed)
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(hf)
        cfg = json.loads((hf / "config.json").read_text())
        tensors = load_file(str(hf / "model.safetensors"))

    n_head, n_kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-test-llama")
    writer.add_context_length(cfg["max_position_embeddings"])
    writer.add_embedding_length(cfg["hidden_size"])
    writer.add_block_count(cfg["num_hidden_layers"])
    writer.add_feed_forward_length(cfg["intermediate_size"])
    writer.add_rope_dimension_count(cfg["hidden_size"] // n_head)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    writer.add_rope_freq_base(cfg.get("rope_theta", 10000.0))
    writer.add_vocab_size(cfg["vocab_size"])
    writer.add_file_type(
        {
            "F32": gguf.LlamaFileType.ALL_F32,
            "F16": gguf.LlamaFileType.MOSTLY_F16,
            "Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
            "Q4_1": gguf.LlamaFileType.MOSTLY_Q4_1,
        }[quant]
    )

    _add_tokenizer(writer, tokenizer)

    qtype = getattr(gguf.GGMLQuantizationType, quant)

    def add(name: str, array: np.ndarray, kind: gguf.GGMLQuantizationType) -> None:
        array = array.astype(np.float32)
        if kind == gguf.GGMLQuantizationType.F32:
            writer.add_tensor(name, array)
        elif kind == gguf.GGMLQuantizationType.F16:
            writer.add_tensor(name, array.astype(np.float16))
        else:
            data = gguf.quants.quantize(array, kind)
            writer.add_tensor(name, data, raw_shape=data.shape, raw_dtype=kind)

    emb_type = gguf.GGMLQuantizationType.Q8_0 if quant == "Q4_1" else qtype
    add("token_embd.weight", tensors["model.embed_tokens.weight"], emb_type)
    add("output_norm.weight", tensors["model.norm.weight"], gguf.GGMLQuantizationType.F32)
    names = {
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    }
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        add(f"blk.{i}.attn_norm.weight", tensors[p + "input_layernorm.weight"],
            gguf.GGMLQuantizationType.F32)  # fmt: skip
        add(f"blk.{i}.ffn_norm.weight", tensors[p + "post_attention_layernorm.weight"],
            gguf.GGMLQuantizationType.F32)  # fmt: skip
        for hf_name, gg_name in names.items():
            w = tensors[p + hf_name + ".weight"]
            if gg_name == "attn_q":
                w = permute_qk(w, n_head, n_head)
            elif gg_name == "attn_k":
                w = permute_qk(w, n_head, n_kv)
            add(f"blk.{i}.{gg_name}.weight", w, qtype)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _add_tokenizer(writer: Any, tokenizer: Any) -> None:
    """The byte-level BPE as llama.cpp's "gpt2" model with GPT-2 pre-tokenization."""
    import json

    import gguf

    vocab = tokenizer.get_vocab()
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    types = [
        gguf.TokenType.CONTROL if t in SPECIAL_TOKENS else gguf.TokenType.NORMAL for t in tokens
    ]
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in merges]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHATML_TEMPLATE)


def build_tiny_qwen2_gguf(path: Path, seed: int = 0) -> Path:
    """A tiny random Qwen2 model (transformers' Qwen2ForCausalLM: q/k/v biases, untied
    output) written as a "qwen2" GGUF the way llama.cpp's converter writes one: tensor names
    from the gguf package's map, q/k rows NOT permuted (only Llama-family models are), F32."""
    import tempfile

    import gguf
    import numpy as np
    import torch
    from safetensors.numpy import load_file
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    path = Path(path)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = build_tokenizer()
        config = Qwen2Config(
            vocab_size=len(tokenizer),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            rms_norm_eps=1e-6,
            rope_theta=10000.0,
            tie_word_embeddings=False,
            bos_token_id=1,
            eos_token_id=2,
        )
        torch.manual_seed(seed)
        Qwen2ForCausalLM(config).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        tokenizer = AutoTokenizer.from_pretrained(tmp)
        tensors = load_file(str(Path(tmp) / "model.safetensors"))

    n_layers = config.num_hidden_layers
    writer = gguf.GGUFWriter(str(path), "qwen2")
    writer.add_name("tiny-test-qwen2")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(n_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(10000.0)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    _add_tokenizer(writer, tokenizer)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN2, n_layers)
    for hf_name, array in tensors.items():
        gg_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        assert gg_name is not None, hf_name
        writer.add_tensor(gg_name, array.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
