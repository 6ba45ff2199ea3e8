"""Guard: GGUF → safetensors conversion, for real (no mocks), on tiny synthetic llama and gemma3 files.

The project converts GGUF language models (``bundled:smollm2-135m-instruct``: llama architecture;
``bundled:gemma3-270m``: gemma3) with :func:`modelyard.llm.cache.resolve_lm` / ``ensure_lm_cache``, which de-quantises
with transformers and saves a validated safetensors cache. Here a tiny model is built directly in transformers from
seeded random tensors (the reference), written to a GGUF with the ``gguf`` package the way llama.cpp's
``convert_hf_to_gguf.py`` lays it out (llama: rotary-interleaved Q/K rows; gemma: norm weights stored as ``1 + w``),
converted by the project's code, and the converted model's logits are compared with the reference's.

Tolerance: the tensors are written as F32 (no quantisation), so the conversion should be exact; logits are compared
with ``atol=1e-5`` (measured: 0.0 max abs difference for both architectures). Mistakes are far above that
(measured: Q/K rows left in llama.cpp's order 0.28, gemma norms without the ``1 + w`` shift 0.29); a wrong tensor
mapping, head count, sliding window or tied/untied head likewise changes the logits, and the saved tensors are also
compared with the reference's name for name.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

from modelyard.llm.cache import load_lm, resolve_lm, validate_cache  # noqa: E402

HIDDEN, FFN, LAYERS, HEADS, KV_HEADS, HEAD_DIM, CONTEXT = 32, 64, 2, 4, 2, 8, 64
IDS = [5, 17, 20, 3, 30, 10, 12, 7, 9, 25]  # longer than gemma's sliding window (4): the window matters


def _reference_llama() -> tuple[torch.nn.Module, list[str], int]:
    """Byte-level BPE vocabulary (256 byte symbols + 4 merges + <|endoftext|>) and an untied llama with GQA."""
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    byte_symbols = bytes_to_unicode()
    tokens = [byte_symbols[b] for b in range(256)] + ["He", "ll", "Hell", "Hello", "<|endoftext|>"]
    eos = len(tokens) - 1
    config = LlamaConfig(
        vocab_size=len(tokens),
        hidden_size=HIDDEN,
        intermediate_size=FFN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        max_position_embeddings=CONTEXT,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        bos_token_id=eos,
        eos_token_id=eos,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    _randomise(model, center=1.0)
    return model, tokens, eos


def _reference_gemma3() -> tuple[torch.nn.Module, list[str], int]:
    """Sentencepiece vocabulary (4 specials + ▁ + a-z + a few pieces) and a tied gemma3 text model."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    tokens = ["<pad>", "<eos>", "<bos>", "<unk>", "\u2581", *map(chr, range(ord("a"), ord("z") + 1))]
    tokens += ["H", "He", "ll", "llo", "Hello", "\u2581w", "\u2581wo"]
    config = Gemma3TextConfig(
        vocab_size=len(tokens),
        hidden_size=HIDDEN,
        intermediate_size=FFN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        head_dim=HEAD_DIM,
        max_position_embeddings=CONTEXT,
        rms_norm_eps=1e-6,
        sliding_window=4,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    torch.manual_seed(0)
    model = Gemma3ForCausalLM(config).eval()
    _randomise(model, center=0.0)  # gemma's RMSNorm scales by (1 + w)
    return model, tokens, 1


def _randomise(model: torch.nn.Module, center: float) -> None:
    """Random norm weights (they start as constants) and sharper attention than the 0.02-std init.

    Both make a mistake visible in the logits: a mixed-up norm mapping, and rotary dimensions paired wrongly
    (which barely matters while attention is near uniform).
    """
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(center, 0.1)
            elif "q_proj" in name or "k_proj" in name:
                p.normal_(0.0, 0.3)


def _llama_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's Q/K row order for its rotary kernel (``LlamaModel.permute`` in convert_hf_to_gguf.py)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _write_llama(path: Path, sd: dict[str, np.ndarray], tokens: list[str], eos: int) -> None:
    w = gguf.GGUFWriter(path, "llama")
    w.add_name("tiny-llama")
    w.add_context_length(CONTEXT)
    w.add_embedding_length(HIDDEN)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(HEAD_DIM)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([1] * (len(tokens) - 1) + [3])  # 1 normal, 3 control
    w.add_token_merges(["H e", "l l", "He ll", "Hell o"])
    w.add_bos_token_id(eos)
    w.add_eos_token_id(eos)
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        w.add_tensor(f"blk.{i}.attn_norm.weight", sd[p + "input_layernorm.weight"])
        w.add_tensor(f"blk.{i}.attn_q.weight", _llama_permute(sd[p + "self_attn.q_proj.weight"], HEADS))
        w.add_tensor(f"blk.{i}.attn_k.weight", _llama_permute(sd[p + "self_attn.k_proj.weight"], KV_HEADS))
        w.add_tensor(f"blk.{i}.attn_v.weight", sd[p + "self_attn.v_proj.weight"])
        w.add_tensor(f"blk.{i}.attn_output.weight", sd[p + "self_attn.o_proj.weight"])
        w.add_tensor(f"blk.{i}.ffn_norm.weight", sd[p + "post_attention_layernorm.weight"])
        w.add_tensor(f"blk.{i}.ffn_gate.weight", sd[p + "mlp.gate_proj.weight"])
        w.add_tensor(f"blk.{i}.ffn_up.weight", sd[p + "mlp.up_proj.weight"])
        w.add_tensor(f"blk.{i}.ffn_down.weight", sd[p + "mlp.down_proj.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    w.add_tensor("output.weight", sd["lm_head.weight"])  # present: the converted model must be untied
    _finish(w)


def _write_gemma3(path: Path, sd: dict[str, np.ndarray], tokens: list[str], eos: int) -> None:
    def norm(key: str) -> np.ndarray:
        return sd[key] + 1.0  # llama.cpp stores gemma's effective scale 1 + w

    w = gguf.GGUFWriter(path, "gemma3")
    w.add_name("tiny-gemma3")
    w.add_context_length(CONTEXT)
    w.add_embedding_length(HIDDEN)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_key_length(HEAD_DIM)
    w.add_value_length(HEAD_DIM)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_sliding_window(4)
    w.add_rope_freq_base(1_000_000.0)  # gemma3's global-attention base (its local base 10k is implied)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * len(tokens))
    w.add_token_types([3, 3, 3, 2] + [1] * (len(tokens) - 4))  # control ×3, unknown, normal
    w.add_bos_token_id(2)
    w.add_eos_token_id(eos)
    w.add_unk_token_id(3)
    w.add_pad_token_id(0)
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])  # no output.weight: tied head
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        w.add_tensor(f"blk.{i}.attn_norm.weight", norm(p + "input_layernorm.weight"))
        w.add_tensor(f"blk.{i}.attn_q.weight", sd[p + "self_attn.q_proj.weight"])
        w.add_tensor(f"blk.{i}.attn_k.weight", sd[p + "self_attn.k_proj.weight"])
        w.add_tensor(f"blk.{i}.attn_v.weight", sd[p + "self_attn.v_proj.weight"])
        w.add_tensor(f"blk.{i}.attn_output.weight", sd[p + "self_attn.o_proj.weight"])
        w.add_tensor(f"blk.{i}.attn_q_norm.weight", norm(p + "self_attn.q_norm.weight"))
        w.add_tensor(f"blk.{i}.attn_k_norm.weight", norm(p + "self_attn.k_norm.weight"))
        w.add_tensor(f"blk.{i}.post_attention_norm.weight", norm(p + "post_attention_layernorm.weight"))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", norm(p + "pre_feedforward_layernorm.weight"))
        w.add_tensor(f"blk.{i}.post_ffw_norm.weight", norm(p + "post_feedforward_layernorm.weight"))
        w.add_tensor(f"blk.{i}.ffn_gate.weight", sd[p + "mlp.gate_proj.weight"])
        w.add_tensor(f"blk.{i}.ffn_up.weight", sd[p + "mlp.up_proj.weight"])
        w.add_tensor(f"blk.{i}.ffn_down.weight", sd[p + "mlp.down_proj.weight"])
    w.add_tensor("output_norm.weight", norm("model.norm.weight"))
    _finish(w)


def _finish(w: Any) -> None:
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


CASES: dict[str, tuple[Callable[[], Any], Callable[..., None], str, list[int]]] = {
    # arch: (reference, writer, text, its expected token ids — merges applied, no BOS for byte-level BPE)
    "llama": (_reference_llama, _write_llama, "Hello world", [259, 32, 119, 111, 114, 108, 100]),
    # sentencepiece without a dummy prefix (Gemma's): <bos> Hello ▁wo r l d
    "gemma3": (_reference_gemma3, _write_gemma3, "Hello world", [2, 35, 37, 22, 16, 8]),
}


@pytest.mark.parametrize("arch", list(CASES))
def test_gguf_converts_to_safetensors_with_the_reference_logits(
    arch: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from safetensors.numpy import load_file

    make_reference, write, text, expected_ids = CASES[arch]
    reference, tokens, eos = make_reference()
    sd = {k: v.detach().numpy().astype(np.float32) for k, v in reference.state_dict().items()}
    gguf_path = tmp_path / f"tiny-{arch}.gguf"
    write(gguf_path, sd, tokens, eos)

    # A recipe's ``model.backbone: tiny.gguf`` goes through resolve_lm: convert once, validate, reuse.
    monkeypatch.setenv("MODELYARD_CACHE", str(tmp_path / "cache"))
    cache_dir = resolve_lm(gguf_path.name, tmp_path)
    assert cache_dir.parent == tmp_path / "cache" / "lm" and cache_dir.name.startswith(f"tiny-{arch}-")
    assert validate_cache(cache_dir, gguf_path) == (True, "ok")
    assert resolve_lm(str(gguf_path), tmp_path) == cache_dir  # reused, not rebuilt

    # the saved tensors are the reference's, name for name (a tied head is not stored twice)
    saved: dict[str, np.ndarray] = {}
    for f in sorted(cache_dir.glob("*.safetensors")):
        saved |= load_file(str(f))
    expected_keys = set(sd) - ({"lm_head.weight"} if reference.config.tie_word_embeddings else set())
    assert set(saved) == expected_keys
    for key in expected_keys:
        np.testing.assert_allclose(saved[key], sd[key], rtol=0, atol=1e-6, err_msg=key)

    model, tokenizer = load_lm(cache_dir)
    assert type(model) is type(reference)
    assert model.config.tie_word_embeddings == reference.config.tie_word_embeddings
    ids = torch.tensor([IDS])
    with torch.no_grad():
        got, want = model(ids).logits, reference(ids).logits
    assert got.shape == want.shape == (1, len(IDS), len(tokens))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    # the tokenizer came across too: merges/pieces applied, specials kept
    assert tokenizer(text)["input_ids"] == expected_ids
    assert tokenizer.decode(expected_ids, skip_special_tokens=True) == text
    assert tokenizer.eos_token_id == eos
