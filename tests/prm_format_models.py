"""Tiny random PRMs saved in the exact layout of each public family (config architectures,
weight names, tokenizer with the family's special tokens, chat template, model card)."""

from __future__ import annotations

from pathlib import Path

WORD_CHARS = "0123456789+-*/=:()., ?abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ\n"
CHAT_SPECIALS = ["<|start_header_id|>", "<|end_header_id|>"]
LLAMA3_TEMPLATE = (
    "{% for message in messages %}{% set content = '<|start_header_id|>' + message['role'] "
    "+ '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}"
)
"""Llama-3's chat template (each turn `<|start_header_id|>role<|end_header_id|>\\n\\n`,
the content trimmed, `<|eot_id|>`; the BOS before the first)."""


def build_tokenizer(bos: bool = True, tag_added: bool = False, chat: bool = False):
    """A word-piece tokenizer like a SentencePiece one: a space before the text (so `ки`
    alone is the token it is after a space), every character one token with or without
    the space before it, `ки` / ` ки` one token; `<|begin_of_text|>` prepended if `bos`."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<|begin_of_text|>", "<|eot_id|>", "<unk>"]
    if chat:
        specials += CHAT_SPECIALS
    words = [c for ch in WORD_CHARS for c in (ch, " " + ch)] + [" ", "ки", " ки"]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(specials + words))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Prepend(" ")
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r" ?ки| ?[\s\S]"), behavior="isolated")
    if bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<|begin_of_text|> $A",
            pair="<|begin_of_text|> $A $B",
            special_tokens=[("<|begin_of_text|>", vocab["<|begin_of_text|>"])],
        )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|begin_of_text|>" if bos else None,
        eos_token="<|eot_id|>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=CHAT_SPECIALS if chat else None,
        clean_up_tokenization_spaces=False,
    )
    if tag_added:
        tokenizer.add_tokens(["ки"])
    if chat:
        tokenizer.chat_template = LLAMA3_TEMPLATE
    return tokenizer


def llama_config(tokenizer, **extra):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        initializer_range=0.3,  # random step values spread over (0, 1)
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **extra,
    )


def save(model, tokenizer, folder: Path, readme: str | None = None) -> Path:
    from tdrm_cli.generation import save_tokenizer

    model.save_pretrained(folder)
    save_tokenizer(tokenizer, str(folder))
    if readme is not None:
        (folder / "README.md").write_text(readme, encoding="utf-8")
    return folder


def trl_prm(folder: Path, bos: bool = True) -> Path:
    """`LlamaForTokenClassification`, two labels, as TRL's PRMTrainer saves it."""
    import torch
    from transformers import LlamaForTokenClassification

    torch.manual_seed(1)
    tokenizer = build_tokenizer(bos=bos)
    config = llama_config(tokenizer, num_labels=2)
    return save(LlamaForTokenClassification(config), tokenizer, folder)


MATH_SHEPHERD_CARD = (
    "# math-shepherd-mistral-7b-prm\n\n```python\ngood_token = '+'\nbad_token = '-'\n"
    "step_tag = 'ки'\n```\n"
)
RLHFLOW_CARD = (
    "This is a process-supervised reward (PRM) from the project "
    "[RLHFlow/RLHF-Reward-Modeling](https://github.com/RLHFlow/RLHF-Reward-Modeling)\n"
)


def causal_lm(folder: Path, readme: str | None = None, chat: bool = False, **kw) -> Path:
    """`LlamaForCausalLM` (untied LM head, as Mistral-7B and Llama-3.1-8B are)."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(2)
    tokenizer = build_tokenizer(chat=chat, **kw)
    config = llama_config(tokenizer, tie_word_embeddings=False)
    return save(LlamaForCausalLM(config), tokenizer, folder, readme)


def math_shepherd_prm(folder: Path, **kw) -> Path:
    return causal_lm(folder, MATH_SHEPHERD_CARD, **kw)


def rlhflow_prm(folder: Path) -> Path:
    return causal_lm(folder, RLHFLOW_CARD, chat=True)
