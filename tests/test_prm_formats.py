"""Public PRM formats: each adapter's step values equal its family's own recipe, written
here from the family's code with plain torch / transformers calls; detection, forcing and
option errors."""

from __future__ import annotations

from itertools import chain

import pytest

from prm_format_models import build_tokenizer, math_shepherd_prm, rlhflow_prm, trl_prm
from tdrm_cli.errors import UsageError

QUESTION = "What is 2+3*4?"
SOLUTIONS = [
    ["3*4=12", "2+12=14", "answer 14"],
    ["2+3=5", "5*4=20"],
    ["answer 14"],
]
TOL = 1e-5


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("formats")
    return {
        "trl": trl_prm(root / "trl"),
        "trl-no-bos": trl_prm(root / "trl-no-bos", bos=False),
        "math-shepherd": math_shepherd_prm(root / "math-shepherd"),
        "math-shepherd-added": math_shepherd_prm(root / "ms-added", tag_added=True),
        "rlhflow": rlhflow_prm(root / "rlhflow"),
    }


def load(folder, fmt=None, options=None):
    from tdrm_cli.prm_formats import load_scoring_prm

    return load_scoring_prm(folder, fmt=fmt, options=options)


def plain(folder, auto_class):
    import torch
    from transformers import PreTrainedTokenizerFast

    model = getattr(__import__("transformers"), auto_class).from_pretrained(
        str(folder), dtype=torch.float32
    )
    return model.eval(), PreTrainedTokenizerFast.from_pretrained(str(folder))


def assert_close(got, want):
    assert [len(v) for v in got] == [len(v) for v in want]
    for g, w in zip(chain(*got), chain(*want), strict=True):
        assert abs(g - w) < TOL, (got, want)
    assert len({round(v, 4) for v in chain(*got)}) > 1  # random weights: values differ


# ---------------------------------------------------------------- references


def trl_reference(folder, question, steps, step_separator="\n"):
    """TRL PRMTrainer.tokenize_row's input, softmax label 1 at every label position."""
    import torch

    model, tokenizer = plain(folder, "AutoModelForTokenClassification")
    prompt_ids = tokenizer(question, add_special_tokens=False)["input_ids"]
    completions_ids = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in steps]
    separator_ids = tokenizer.encode(step_separator, add_special_tokens=False)
    completions_ids = [c + separator_ids for c in completions_ids]
    labels = [[-100] * (len(c) - 1) + [1] for c in completions_ids]
    if tokenizer.bos_token_id is not None:
        prompt_ids = [tokenizer.bos_token_id] + prompt_ids
    input_ids = prompt_ids + list(chain(*completions_ids))
    labels = [-100] * len(prompt_ids) + list(chain(*labels))
    with torch.no_grad():
        probs = model(torch.tensor([input_ids])).logits[0].softmax(-1)[:, 1]
    return [float(probs[i]) for i, label in enumerate(labels) if label != -100]


def math_shepherd_card(folder, question, steps):
    """The model card snippet of peiyi9979/math-shepherd-mistral-7b-prm, on the whole text."""
    import torch

    model, tokenizer = plain(folder, "AutoModelForCausalLM")
    good_token, bad_token, step_tag = "+", "-", "ки"
    candidate_tokens = tokenizer.encode(f"{good_token} {bad_token}")[1:]
    step_tag_id = tokenizer.encode(f"{step_tag}")[-1]
    output = "\n".join(f"{s} {step_tag}" for s in steps)
    input_id = torch.tensor([tokenizer.encode(f"{question} {output}")])
    with torch.no_grad():
        logits = model(input_id).logits[:, :, candidate_tokens]
        scores = logits.softmax(dim=-1)[:, :, 0]
    return scores[input_id == step_tag_id].tolist()


def math_shepherd_openrlhf(folder, question, steps, prefix):
    """OpenRLHF's ProcessRewardDataset / PRMLoss reading, each prefix scored alone when
    `prefix` (its last placeholder), else the whole text."""
    import torch

    model, tokenizer = plain(folder, "AutoModelForCausalLM")

    def one(token):
        ids = tokenizer.encode(token, add_special_tokens=False)
        assert len(ids) == 1
        return ids[0]

    placeholder, rewards = one("ки"), [one("+"), one("-")]
    values = []
    for k in range(1, len(steps) + 1) if prefix else [len(steps)]:
        text = question + " " + "\n".join(f"{s} ки" for s in steps[:k])
        inputs = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            logits = model(inputs).logits[inputs == placeholder][..., rewards]
        probs = logits.softmax(-1)[:, 0].tolist()
        values += probs[-1:] if prefix else probs
    return values


def rlhflow_reference(folder, question, steps):
    """RLHFlow math-rm/prm_evaluate.py select_sample: one forward pass per step."""
    import torch

    model, tokenizer = plain(folder, "AutoModelForCausalLM")
    candidate_tokens = [tokenizer.encode("+")[-1], tokenizer.encode("-")[-1]]
    conversation, single_step_score = [], []
    for k, step in enumerate(s.strip() for s in steps):
        text = question + " " + step if k == 0 else step
        conversation.append({"content": text, "role": "user"})
        conversation.append({"content": "+", "role": "assistant"})
        input_ids = tokenizer.apply_chat_template(conversation, return_tensors="pt")
        input_ids = getattr(input_ids, "input_ids", input_ids)
        with torch.no_grad():
            logits = model(input_ids).logits[:, -3, candidate_tokens]
            scores = logits.softmax(dim=-1)[:, 0]
        single_step_score.append(scores[0].item())
    return single_step_score


# ---------------------------------------------------------------- values


@pytest.mark.parametrize("name", ["trl", "trl-no-bos"])
def test_trl_equals_prm_trainer_tokenization(folders, name):
    prm = load(folders[name])
    assert prm.meta["format"] == "trl"
    got = prm.score([QUESTION] * len(SOLUTIONS), SOLUTIONS, batch_size=2)
    assert_close(got, [trl_reference(folders[name], QUESTION, s) for s in SOLUTIONS])
    sep = load(folders[name], options={"step_separator": " ; "})
    got = sep.score([QUESTION], SOLUTIONS[:1])
    assert_close(got, [trl_reference(folders[name], QUESTION, SOLUTIONS[0], " ; ")])


def test_trl_one_pass_equals_each_prefix(folders):
    prm = load(folders["trl"])
    steps = SOLUTIONS[0]
    whole = prm.score([QUESTION], [steps])[0]
    alone = [prm.score([QUESTION], [steps[:k]])[0][-1] for k in range(1, len(steps) + 1)]
    assert_close([whole], [alone])


def test_math_shepherd_equals_the_model_card(folders):
    prm = load(folders["math-shepherd"])
    assert prm.meta["format"] == "math-shepherd"
    got = prm.score([QUESTION] * len(SOLUTIONS), SOLUTIONS, batch_size=2)
    folder = folders["math-shepherd"]
    assert_close(got, [math_shepherd_card(folder, QUESTION, s) for s in SOLUTIONS])
    # the adapter reads every step from one pass: the same as each prefix alone
    assert all(len(s) == 1 for s in (prm.sequences(QUESTION, x) for x in SOLUTIONS))


def test_math_shepherd_openrlhf_recipe(folders):
    folder = folders["math-shepherd"]
    prm = load(folder, options={"recipe": "openrlhf"})
    got = prm.score([QUESTION] * len(SOLUTIONS), SOLUTIONS)
    whole = [math_shepherd_openrlhf(folder, QUESTION, s, prefix=False) for s in SOLUTIONS]
    alone = [math_shepherd_openrlhf(folder, QUESTION, s, prefix=True) for s in SOLUTIONS]
    assert_close(got, whole)
    assert_close(got, alone)
    card = load(folder).score([QUESTION] * len(SOLUTIONS), SOLUTIONS)
    assert max(abs(a - b) for a, b in zip(chain(*got), chain(*card), strict=True)) > 1e-4


def test_rlhflow_one_pass_equals_a_pass_per_step(folders):
    prm = load(folders["rlhflow"])
    assert prm.meta["format"] == "rlhflow"
    steps = [*SOLUTIONS, [" padded step ", "\nnext "]]
    got = prm.score([QUESTION] * len(steps), steps, batch_size=3)
    assert_close(got, [rlhflow_reference(folders["rlhflow"], QUESTION, s) for s in steps])
    assert all(len(prm.sequences(QUESTION, s)) == 1 for s in steps)


def test_batches_and_empty_solutions(folders):
    prm = load(folders["math-shepherd"])
    alone = [prm.score([QUESTION], [s])[0] for s in SOLUTIONS]
    mixed = prm.score([QUESTION] * 4, [SOLUTIONS[0], [], SOLUTIONS[1], SOLUTIONS[2]], 2)
    assert mixed[1] == []
    assert_close([mixed[0], mixed[2], mixed[3]], alone)


def test_one_pass_keeps_prefixes_that_do_not_extend_apart():
    from tdrm_cli.prm_formats.base import Sequence_, one_pass

    merged = one_pass(
        [Sequence_([1, 2], [1]), Sequence_([1, 2, 3], [2]), Sequence_([1, 9, 3, 4], [3])]
    )
    assert [(s.ids, s.positions) for s in merged] == [([1, 2, 3], [1, 2]), ([1, 9, 3, 4], [3])]


# ---------------------------------------------------------------- detection and errors


def test_detection(folders):
    from tdrm_cli.prm_formats import detect, read_folder

    want = {
        "trl": "trl",
        "trl-no-bos": "trl",
        "math-shepherd": "math-shepherd",
        "math-shepherd-added": "math-shepherd",  # the tag is an added token; no model card
        "rlhflow": "rlhflow",
    }
    for name, folder in folders.items():
        if name == "math-shepherd-added":
            (folder / "README.md").unlink(missing_ok=True)
        assert detect(read_folder(folder)).name == want[name], name


def test_tdrm_prm_is_tdrm(tiny_prm):
    from tdrm_cli.prm import PRM
    from tdrm_cli.prm_formats import format_name, load_scoring_prm

    assert format_name(tiny_prm) == "tdrm"
    assert type(load_scoring_prm(tiny_prm)) is PRM
    with pytest.raises(UsageError, match="format 'tdrm' takes no options"):
        load_scoring_prm(tiny_prm, options={"agg": "min"})
    with pytest.raises(UsageError, match="is a PRM trained by tdrm"):
        load_scoring_prm(tiny_prm, fmt="trl")


def test_plain_causal_lm_matches_no_format_and_forcing_works(folders, tmp_path):
    import shutil

    from tdrm_cli.prm_formats import FORMATS

    plain_lm = tmp_path / "plain"
    shutil.copytree(folders["math-shepherd"], plain_lm)
    (plain_lm / "README.md").write_text("# a causal LM\n")
    with pytest.raises(UsageError) as e:
        load(plain_lm)
    line = str(e.value)
    assert "\n" not in line and "no tdrm_prm.json" in line and "--prm-format" in line
    assert all(name in line for name in FORMATS if name != "tdrm")
    forced = load(plain_lm, fmt="math-shepherd").score([QUESTION], SOLUTIONS[:1])
    assert_close(forced, [math_shepherd_card(plain_lm, QUESTION, SOLUTIONS[0])])


def test_a_chat_model_without_the_card_is_not_rlhflow(folders, tmp_path):
    import shutil

    from tdrm_cli.prm_formats import detect, read_folder

    folder = tmp_path / "chat"
    shutil.copytree(folders["rlhflow"], folder)
    (folder / "README.md").unlink()
    assert detect(read_folder(folder)) is None


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"step_tagg": "x"}, "has no option 'step_tagg'"),
        ({"recipe": "mine"}, "recipe=mine: expected card or openrlhf"),
        ({"agg": "median"}, "agg=median"),
        ({"good_token": "+-+"}, "expected two"),
        ({"recipe": "openrlhf", "bad_token": "ab"}, "bad_token=ab: is 2 tokens"),
    ],
)
def test_bad_options_are_one_line(folders, options, needle):
    with pytest.raises(UsageError) as e:
        load(folders["math-shepherd"], options=options)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_option_parsing_and_rules():
    from tdrm_cli.prm_formats import check_choices, parse_options

    opts = parse_options(["step_tag=\\n", "2:agg=mean", "a=b=c"], 2)
    assert [(o.key, o.value, o.prm) for o in opts] == [
        ("step_tag", "\n", None),
        ("agg", "mean", 1),
        ("a", "b=c", None),
    ]
    check_choices(["a", "b"], ["trl", "auto"], [])
    for formats, options, needle in [
        (["nope"], [], "--prm-format nope"),
        (["trl", "trl", "trl"], [], "given 3 times for 2 --prm"),
        ([], ["novalue"], "expected KEY=VALUE"),
        ([], ["3:agg=min"], "no --prm number 3"),
    ]:
        with pytest.raises(UsageError, match=needle):
            check_choices(["a", "b"], formats, options)


def test_options_go_to_the_formats_that_take_them(folders, tiny_prm):
    from tdrm_cli.prm_formats import load_scoring_prms

    tdrm_prm, shepherd = load_scoring_prms(
        [tiny_prm, folders["math-shepherd"]], options=["recipe=openrlhf", "agg=mean"]
    )
    assert shepherd.meta["recipe"] == "openrlhf" and shepherd.agg == "mean"
    assert tdrm_prm.meta.get("recipe") is None
    with pytest.raises(UsageError, match="no given PRM's format takes it"):
        load_scoring_prms([tiny_prm], options=["recipe=card"])
    with pytest.raises(UsageError, match="format 'tdrm' takes no options"):
        load_scoring_prms([tiny_prm, folders["trl"]], options=["1:agg=min"])


def test_pickle_only_folder_needs_allow_pickle(folders, tmp_path):
    import shutil

    import torch
    from safetensors.torch import load_file

    from tdrm_cli.prm_formats import load_scoring_prm

    folder = tmp_path / "pickled"
    shutil.copytree(folders["trl"], folder)
    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(UsageError, match="pickle weights can run code"):
        load_scoring_prm(folder, fmt="trl")
    got = load_scoring_prm(folder, fmt="trl", allow_pickle=True).score([QUESTION], SOLUTIONS[:1])
    assert_close(got, [trl_reference(folders["trl"], QUESTION, SOLUTIONS[0])])


def test_the_test_tokenizer_is_sentencepiece_like():
    """The test tokenizer reads `ки` alone as it reads it after a space, like SentencePiece."""
    tokenizer = build_tokenizer()
    assert tokenizer.encode("ки")[-1] == tokenizer.encode("a ки")[-1]
    assert (
        len(tokenizer.encode("+ -")) == 3 and tokenizer.encode("+ -")[0] == tokenizer.bos_token_id
    )


def test_rl_prm_reward_takes_a_public_prm(folders):
    from tdrm_cli.rewards import PRMReward
    from tdrm_cli.voting import aggregate

    prm = load(folders["trl"], options={"separator": " | "})
    reward = PRMReward(prm, "mean")
    completions = [" | ".join(s) for s in SOLUTIONS]
    got = reward([QUESTION] * 3, completions, question=[QUESTION] * 3)
    want = [aggregate(v, "mean") for v in prm.score([QUESTION] * 3, SOLUTIONS)]
    assert got == pytest.approx(want, abs=TOL)
