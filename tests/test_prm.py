"""prm.py: aggregations vs. loops, single-pass == per-prefix scoring, save/load, refusals."""

from __future__ import annotations

import json
import math
import random

import pytest

from tdrm_cli.errors import UsageError
from tdrm_cli.prm import (
    PRM,
    Encoded,
    check_causal_lm,
    length_buckets,
    load_prm,
    load_tokenizer,
    load_value_model,
    pad_batch,
    prm_meta,
)
from tdrm_cli.steps import read_policy_meta
from tdrm_cli.tasks.arith import ArithTask
from tdrm_cli.voting import AGGREGATIONS, aggregate


def make_tiny_base(path, hidden: int = 32, layers: int = 2, seed: int = 0, tokenizer=None):
    """A seeded random Qwen2 causal LM with policy meta (no training), for the sft char
    tokenizer or the `tokenizer` given."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from tdrm_cli.stages.sft import PROMPT_TEMPLATE, build_char_tokenizer
    from tdrm_cli.steps import DEFAULT_SEPARATOR, POLICY_META

    tokenizer = tokenizer or build_char_tokenizer()
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    Qwen2ForCausalLM(config).save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    meta = {"prompt_template": PROMPT_TEMPLATE, "separator": DEFAULT_SEPARATOR, "task": "arith"}
    (path / POLICY_META).write_text(json.dumps(meta))
    return path


def prm_from_base(base, agg: str = "min") -> PRM:
    import torch

    torch.manual_seed(1)
    tokenizer = load_tokenizer(str(base))
    model = load_value_model(str(base), tokenizer.pad_token_id)
    return PRM(model, tokenizer, prm_meta(tokenizer, read_policy_meta(base), agg=agg, loss="td"))


def arith_solutions(n: int, seed: int = 0):
    task = ArithTask(ops=3)
    problems = task.problems("train", n)
    rng = random.Random(seed)
    solutions = [task.reference_steps(p)[: rng.randint(0, 4)] for p in problems]
    return [p.question for p in problems], solutions


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_tiny_base(tmp_path_factory.mktemp("base") / "model")


@pytest.fixture(scope="module")
def prm(base):
    return prm_from_base(base)


# ---------------------------------------------------------------- aggregations


def loop_aggregate(values, agg):
    if not values:
        return 0.0
    if agg == "min":
        out = values[0]
        for v in values[1:]:
            out = v if v < out else out
        return out
    if agg == "last":
        return values[len(values) - 1]
    if agg == "prod":
        out = 1.0
        for v in values:
            out *= v
        return out
    total = 0.0
    for v in values:
        total += v
    return total / len(values)


@pytest.mark.parametrize("agg", sorted(AGGREGATIONS))
def test_aggregations_match_loops(agg):
    rng = random.Random(agg)
    for length in [0, 1, 2, 5, 9]:
        values = [rng.random() for _ in range(length)]
        assert math.isclose(aggregate(values, agg), loop_aggregate(values, agg), rel_tol=1e-12)


def test_aggregate_empty_and_unknown():
    assert all(aggregate([], agg) == 0.0 for agg in AGGREGATIONS)
    with pytest.raises(UsageError, match="--agg bogus"):
        aggregate([0.5], "bogus")


# ---------------------------------------------------------------- batching helpers


def test_pad_batch_and_step_tokens():
    rows = [Encoded([5, 6, 7, 8, 9], [2, 4], prompt_len=2), Encoded([5, 6, 7], [2], prompt_len=2)]
    batch = pad_batch(rows, pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9], [5, 6, 7, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert batch["step_index"].tolist() == [[2, 4], [2, 0]]
    assert batch["step_mask"].tolist() == [[True, True], [True, False]]
    assert rows[0].step_tokens == [1, 2] and rows[1].step_tokens == [1]


def test_length_buckets_cover_every_index_once():
    lengths = [5, 1, 9, 3, 3, 7, 2]
    buckets = list(length_buckets(lengths, 3))
    assert sorted(i for b in buckets for i in b) == list(range(len(lengths)))
    assert [[lengths[i] for i in b] for b in buckets] == [[1, 2, 3], [3, 5, 7], [9]]


# ---------------------------------------------------------------- scoring


def per_prefix_scores(prm: PRM, question: str, steps: list[str]) -> list[float]:
    """The reference way: every prefix in its own forward pass, value at its last token."""
    import torch

    out = []
    for t in range(1, len(steps) + 1):
        encoded = prm.encode(question, steps[:t])
        with torch.inference_mode():
            logits = prm.model(input_ids=torch.tensor([encoded.ids])).logits
        out.append(torch.sigmoid(logits[0, -1, 0]).item())
    return out


def test_single_pass_equals_per_prefix(prm):
    questions, solutions = arith_solutions(12)
    scores = prm.score(questions, solutions, batch_size=5)
    assert [len(s) for s in scores] == [len(s) for s in solutions]
    diffs = [
        abs(a - b)
        for q, steps, row in zip(questions, solutions, scores, strict=True)
        for a, b in zip(row, per_prefix_scores(prm, q, steps), strict=True)
    ]
    assert diffs and max(diffs) < 1e-5
    assert all(0.0 < v < 1.0 for row in scores for v in row)


def test_scores_do_not_depend_on_batching(prm):
    questions, solutions = arith_solutions(9, seed=3)
    one = prm.score(questions, solutions, batch_size=1)
    many = prm.score(questions, solutions, batch_size=64)
    assert (
        max(
            abs(a - b)
            for r1, r2 in zip(one, many, strict=True)
            for a, b in zip(r1, r2, strict=True)
        )
        < 1e-5
    )


def test_zero_step_solutions_score_empty(prm):
    assert prm.score(["1+2", "3+4"], [[], []]) == [[], []]
    assert prm.score([], []) == []
    mixed = prm.score(["1+2", "3+4"], [[], ["3+4=7", "answer 7"]])
    assert mixed[0] == [] and len(mixed[1]) == 2
    with pytest.raises(ValueError):
        prm.score(["1+2"], [])


def test_char_tokenizer_keeps_separators_and_prompt_whitespace(prm):
    # one token per character: BOS + "12+7\n\n" for the prompt, every step + "\n\n"
    encoded = prm.encode("12+7", ["12+7=19", "answer 19"])
    assert encoded.prompt_len == 1 + len("12+7\n\n")
    assert encoded.step_tokens == [len("12+7=19\n\n"), len("answer 19\n\n")]


def test_prefix_tokens_identical_inside_whole_solution(prm):
    steps = ["12+7=19", "19-3=16", "answer 16"]
    whole = prm.encode("12+7-3", steps)
    for t in range(1, len(steps) + 1):
        prefix = prm.encode("12+7-3", steps[:t])
        assert whole.ids[: len(prefix.ids)] == prefix.ids and prefix.ends == whole.ends[:t]


# ---------------------------------------------------------------- save / load


def test_save_and_load_round_trip(prm, tmp_path):
    from transformers import AutoModelForTokenClassification

    folder = prm.save(tmp_path / "prm")
    assert (folder / "model.safetensors").is_file() and not list(folder.glob("*.bin"))
    hf = AutoModelForTokenClassification.from_pretrained(folder, num_labels=1)
    assert hf.config.num_labels == 1
    loaded = load_prm(folder)
    assert loaded.separator == "\n\n" and loaded.agg == "min"
    meta = json.loads((folder / "tdrm_prm.json").read_text())
    assert meta["prompt_format"] == "template" and meta["loss"] == "td"
    questions, solutions = arith_solutions(6, seed=1)
    before, after = prm.score(questions, solutions), loaded.score(questions, solutions)
    assert (
        max(
            abs(a - b)
            for r1, r2 in zip(before, after, strict=True)
            for a, b in zip(r1, r2, strict=True)
        )
        < 1e-6
    )


def test_load_prm_refuses_non_prm_folders(base, prm, tmp_path):
    with pytest.raises(UsageError, match="no tdrm_prm.json"):
        load_prm(base)  # a causal LM, not a PRM
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "config.json").write_text((base / "config.json").read_text())
    (fake / "tdrm_prm.json").write_text("{}")
    with pytest.raises(UsageError, match="not a one-label token-classification model"):
        load_prm(fake)
    with pytest.raises(UsageError, match="no such model folder"):
        load_prm(tmp_path / "missing")


def test_check_causal_lm(base, tmp_path):
    check_causal_lm(str(base))
    t5 = tmp_path / "t5"
    t5.mkdir()
    (t5 / "config.json").write_text(
        json.dumps({"model_type": "t5", "architectures": ["T5ForConditionalGeneration"]})
    )
    with pytest.raises(UsageError, match="not a causal LM"):
        check_causal_lm(str(t5))


# ---------------------------------------------------------------- the likelihood head


def likelihood_prm(base) -> PRM:
    import torch

    torch.manual_seed(1)
    tokenizer = load_tokenizer(str(base))
    model = load_value_model(str(base), tokenizer.pad_token_id)
    meta = prm_meta(tokenizer, read_policy_meta(base), agg="min", loss="td", head="likelihood")
    return PRM(model, tokenizer, meta)


def reference_likelihood_values(base, prm: PRM, question: str, steps: list[str]) -> list[float]:
    """By hand, per prefix: the causal LM's log-probability of every token of the steps'
    text (its own LM head, not the PRM's; the separators after each step left out), the
    minimum, plus the linear head at the prefix's end."""
    import torch
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(str(base)).eval()
    sep = len(prm.tokenizer(prm.separator, add_special_tokens=False)["input_ids"])
    out = []
    for t in range(1, len(steps) + 1):
        encoded = prm.encode(question, steps[:t])
        separators = {j for end in encoded.ends for j in range(end + 1 - sep, end + 1)}
        ids = torch.tensor([encoded.ids])
        with torch.inference_mode():
            logprobs = torch.log_softmax(lm(input_ids=ids).logits[0].float(), dim=-1)
            floor = min(
                logprobs[j - 1, encoded.ids[j]].item()
                for j in range(encoded.prompt_len, len(encoded.ids))
                if j not in separators
            )
            linear = prm.model(input_ids=ids).logits[0, -1, 0].item()
        out.append(1.0 / (1.0 + math.exp(-(linear + min(floor, 0.0)))))
    return out


def diffs_from_reference(base, prm: PRM, questions, solutions, scores) -> list[float]:
    """|PRM value - by-hand value| for every step of every solution."""
    return [
        abs(a - b)
        for q, steps, row in zip(questions, solutions, scores, strict=True)
        for a, b in zip(row, reference_likelihood_values(base, prm, q, steps), strict=True)
    ]


def test_likelihood_head_equals_the_causal_lm_by_hand(base):
    prm = likelihood_prm(base)
    questions, solutions = arith_solutions(8, seed=4)
    scores = prm.score(questions, solutions, batch_size=3)
    diffs = diffs_from_reference(base, prm, questions, solutions, scores)
    assert len(diffs) > 8 and max(diffs) < 1e-5
    # It is not the linear head: the floor lowers every value.
    linear = prm_from_base(base).score(questions, solutions, batch_size=3)
    assert all(
        a < b for r1, r2 in zip(scores, linear, strict=True) for a, b in zip(r1, r2, strict=True)
    )


def test_likelihood_head_survives_save_and_load(base, tmp_path):
    prm = likelihood_prm(base)
    loaded = load_prm(prm.save(tmp_path / "prm"))
    assert loaded.head == "likelihood"
    questions, solutions = arith_solutions(5, seed=2)
    before, after = prm.score(questions, solutions), loaded.score(questions, solutions)
    assert (
        max(
            abs(a - b)
            for r, s in zip(before, after, strict=True)
            for a, b in zip(r, s, strict=True)
        )
        < 1e-6
    )


def test_likelihood_head_refusals(base, tmp_path):
    from tdrm_cli.prm import check_head

    prm = likelihood_prm(base)
    folder = prm.save(tmp_path / "prm")
    meta = json.loads((folder / "tdrm_prm.json").read_text())
    (folder / "tdrm_prm.json").write_text(json.dumps({**meta, "head": "median"}))
    with pytest.raises(UsageError, match="head 'median' is unknown"):
        load_prm(folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "tdrm_prm.json").write_text(json.dumps(meta))
    (folder / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": False}))
    with pytest.raises(UsageError, match="tied"):
        load_prm(folder)

    class Untied:
        tie_word_embeddings = False

    check_head("linear", Untied(), "x")  # the linear head needs nothing
    with pytest.raises(UsageError, match="tie_word_embeddings"):
        check_head("likelihood", Untied(), "x")


def test_the_policy_likelihood_baseline_is_the_floor_alone(base):
    """The untrained baseline: the likelihood head with its linear part zeroed, so a step's
    value is sigmoid(lowest log-probability the policy gives its steps' text so far)."""
    from tdrm_cli.prm import policy_likelihood_prm, value_head

    prm = policy_likelihood_prm(str(base))
    assert (
        prm.head == "likelihood" and float(value_head(prm.model).weight.detach().abs().sum()) == 0.0
    )
    questions, solutions = arith_solutions(6, seed=7)
    scores = prm.score(questions, solutions, batch_size=4)
    diffs = diffs_from_reference(base, prm, questions, solutions, scores)
    assert len(diffs) > 6 and max(diffs) < 1e-5
    assert all(v <= 0.5 + 1e-6 for row in scores for v in row)  # sigmoid of a log-probability
