"""Saved folders need nothing from tdrm: plain `AutoTokenizer` reads the tokenizer of a
policy (`tdrm sft`) and of a PRM (`tdrm train-prm`) exactly, and the README's
plain-transformers snippet scores a PRM's steps as `load_prm(...).score` does."""

from __future__ import annotations

import json
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
SNIPPET_MARKER = "<!-- tested: plain-transformers-prm -->"
SNIPPET_FOLDER = '"runs/prm-td/model"'


def texts() -> list[str]:
    """Every character of the task alphabet, and whitespace where tokenizers like to eat it."""
    from tdrm_cli.stages.sft import CHARS

    return [
        CHARS,
        "12-12+13-6-3\n\n12-12=0\n\n0+13=13\n\nanswer 4",
        "  two leading spaces, three newlines\n\n\nand two trailing  ",
        "a ? b , c . d",  # what clean_up_tokenization_spaces would rewrite
        " ",
        "\n",
    ]


def assert_round_trips(folder: Path) -> None:
    from transformers import AutoTokenizer

    from tdrm_cli.generation import load_tokenizer
    from tdrm_cli.stages.sft import CHARS

    auto = AutoTokenizer.from_pretrained(str(folder))
    ours = load_tokenizer(str(folder))
    for text in texts():
        ids = auto(text)["input_ids"]
        assert ids == ours(text)["input_ids"], (type(auto).__name__, text)
        assert ids[0] == auto.bos_token_id and auto.decode(ids, skip_special_tokens=True) == text
        bare = auto(text, add_special_tokens=False)["input_ids"]
        assert len(bare) == len(text) and auto.decode(bare) == text, (type(auto).__name__, text)
    one_each = auto(CHARS, add_special_tokens=False)["input_ids"]
    assert len(set(one_each)) == len(CHARS) and auto.unk_token_id not in one_each
    # the class name transformers 4 resolves (it has no TokenizersBackend)
    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"


def test_auto_tokenizer_reads_a_policy_and_its_prm_exactly(tiny_policy, tiny_prm):
    assert_round_trips(tiny_policy / "model")
    assert_round_trips(tiny_prm / "model")  # train-prm saves the policy's tokenizer as it is


def test_tdrm_still_reads_a_folder_saved_before_the_byte_level_spelling(tmp_path):
    """Folders saved earlier spell a space and a newline as themselves (which transformers 5
    `AutoTokenizer` drops); tdrm's loader reads them intact, with the same ids as now."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, Qwen2Config

    from tdrm_cli.generation import load_tokenizer
    from tdrm_cli.stages.sft import CHARS, SPECIALS, build_char_tokenizer

    vocab = {tok: i for i, tok in enumerate(SPECIALS + list(CHARS))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    old = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
        unk_token="<unk>",
    )  # fmt: skip
    old.save_pretrained(str(tmp_path))  # as before: no tokenizer_class rewrite
    Qwen2Config(vocab_size=len(vocab)).save_pretrained(str(tmp_path))
    ours, now = load_tokenizer(str(tmp_path)), build_char_tokenizer()
    for text in texts():
        ids = ours(text)["input_ids"]
        assert ours.decode(ids, skip_special_tokens=True) == text
        assert ids == now(text)["input_ids"]


def readme_snippet() -> str:
    found = re.search(
        re.escape(SNIPPET_MARKER) + r"\n```python\n(.*?)\n```",
        README.read_text(encoding="utf-8"),
        re.S,
    )
    assert found, f"README.md has no ```python block right after {SNIPPET_MARKER}"
    return found.group(1)


def test_the_readme_snippet_scores_like_load_prm(tiny_prm):
    from tdrm_cli.prm import load_prm

    code = readme_snippet()
    assert code.count(SNIPPET_FOLDER) == 1 and not re.search(r"(import|from) tdrm", code)
    namespace: dict = {}
    folder = repr(str(tiny_prm / "model"))
    exec(compile(code.replace(SNIPPET_FOLDER, folder), str(README), "exec"), namespace)
    question, steps, values = namespace["question"], namespace["steps"], namespace["values"]
    expected = load_prm(tiny_prm).score([question], [steps])[0]
    assert len(values) == len(steps) == len(expected)
    assert all(abs(a - b) <= 1e-6 for a, b in zip(values, expected, strict=True)), (
        values,
        expected,
    )
    assert abs(namespace["score"] - min(expected)) <= 1e-6
