"""The one-pass scoring and token-shift checks of test_prm.py, with a byte-level BPE tokenizer.

tdrm's own policies use one token per character, where a piece boundary can never fall
inside a token. Real backbones (SmolLM2, Qwen, Llama) use byte-level BPE, whose tokens
span characters and merge whitespace: here a small one is trained in the test on arith
solutions, so digits, operators and the "\\n\\n" separator merge into multi-character tokens.
"""

from __future__ import annotations

import pytest

from tdrm_cli.tasks.arith import ArithTask
from test_prm import (
    arith_solutions,
    diffs_from_reference,
    likelihood_prm,
    make_tiny_base,
    per_prefix_scores,
    prm_from_base,
)


def make_bpe_base(path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from tdrm_cli.stages.sft import PROMPT_TEMPLATE
    from tdrm_cli.steps import DEFAULT_SEPARATOR

    task = ArithTask(ops=3)
    corpus = [
        PROMPT_TEMPLATE.format(question=p.question)
        + DEFAULT_SEPARATOR.join(task.reference_steps(p))
        for p in task.problems("train", 300)
    ]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(corpus, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    return make_tiny_base(path, tokenizer=tokenizer)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_bpe_base(tmp_path_factory.mktemp("bpe") / "model")


@pytest.fixture(scope="module")
def prm(base):
    return prm_from_base(base)


def test_the_tokenizer_really_merges_across_characters(prm):
    """Without merges this file would repeat test_prm.py: check the tokens span characters,
    the separator included, and that piecewise encoding differs from encoding the whole text."""
    steps = ["12+7=19", "19-3=16", "answer 16"]
    sep_ids = prm.tokenizer(prm.separator, add_special_tokens=False)["input_ids"]
    assert len(sep_ids) == 1
    encoded = prm.encode("12+7-3", steps)
    pieces, text = encoded.ids[encoded.prompt_len :], "".join(s + prm.separator for s in steps)
    assert len(pieces) < len(text) and prm.tokenizer.decode(pieces) == text
    assert prm.tokenizer(text, add_special_tokens=False)["input_ids"] != pieces


def test_single_pass_equals_per_prefix_with_bpe(prm):
    questions, solutions = arith_solutions(12)
    scores = prm.score(questions, solutions, batch_size=5)
    diffs = [
        abs(a - b)
        for q, steps, row in zip(questions, solutions, scores, strict=True)
        for a, b in zip(row, per_prefix_scores(prm, q, steps), strict=True)
    ]
    assert len(diffs) > 12 and max(diffs) < 1e-5


def test_scores_do_not_depend_on_batching_with_bpe(prm):
    questions, solutions = arith_solutions(9, seed=3)
    one = prm.score(questions, solutions, batch_size=1)
    many = prm.score(questions, solutions, batch_size=64)
    pairs = [(a, b) for r1, r2 in zip(one, many, strict=True) for a, b in zip(r1, r2, strict=True)]
    assert pairs and max(abs(a - b) for a, b in pairs) < 1e-5


def test_prefix_tokens_identical_inside_whole_solution_with_bpe(prm):
    steps = ["12+7=19", "19-3=16", "answer 16"]
    whole = prm.encode("12+7-3", steps)
    for t in range(1, len(steps) + 1):
        prefix = prm.encode("12+7-3", steps[:t])
        assert whole.ids[: len(prefix.ids)] == prefix.ids and prefix.ends == whole.ends[:t]


def test_likelihood_head_token_shift_with_bpe(base):
    prm = likelihood_prm(base)
    questions, solutions = arith_solutions(8, seed=4)
    scores = prm.score(questions, solutions, batch_size=3)
    diffs = diffs_from_reference(base, prm, questions, solutions, scores)
    assert len(diffs) > 8 and max(diffs) < 1e-5
