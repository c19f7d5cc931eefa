"""prm_formats skywork / qwen-prm / tdrm-paper: tiny random models in each family's exact
checkpoint layout; detection, scores against a plain-torch reference of each family's
published recipe, one pass == each prefix alone, and the one-line refusals."""

from __future__ import annotations

import json
import shutil

import pytest

from tdrm_cli.errors import UsageError
from tdrm_cli.prm_formats import qwen_prm, skywork, tdrm_paper
from tdrm_cli.prm_formats.base import read_folder
from tdrm_cli.tasks.arith import ArithTask
from test_prm import arith_solutions, make_tiny_base, prm_from_base

HIDDEN = 32
QWEN_TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + "
    "'<|im_end|>' + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# DeepSeek-R1-Distill style: the template writes bos, and the tokenizer adds one too.
TDRM_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}"
    "{{ '<|User|>' + m['content'] }}{% else %}{{ '<|Assistant|>' + m['content'] + eos_token }}"
    "{% endif %}{% endfor %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<extra_0>", "<|User|>",
            "<|Assistant|>", "[PAD]"]  # fmt: skip


def bpe_tokenizer(chat_template: str, add_bos: bool = False):
    """A byte-level BPE trained on arith text (multi-character tokens, merged newlines)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    task = ArithTask(ops=3)
    corpus = [p.question + "\n" + "\n\n".join(task.reference_steps(p)) for p in
              task.problems("train", 200)]  # fmt: skip
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )  # fmt: skip
    bpe.train_from_iterator(corpus, trainer)
    if add_bos:
        bos = bpe.token_to_id("<|endoftext|>")
        bpe.post_processor = processors.TemplateProcessing(
            single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", bos)]
        )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<|endoftext|>", eos_token="<|im_end|>",
        pad_token="[PAD]" if add_bos else "<|endoftext|>",
        additional_special_tokens=SPECIALS[1:6],
    )  # fmt: skip
    tokenizer.chat_template = chat_template
    return tokenizer


def qwen2_config(tokenizer, **extra):
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=HIDDEN, intermediate_size=2 * HIDDEN,
        num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
        max_position_embeddings=512, tie_word_embeddings=False, **extra,
    )  # fmt: skip


def save_folder(path, tokenizer, config, state, architecture: str, auto_map: dict | None):
    """config.json as the family writes it (`architectures`, `auto_map` naming code files
    that are not there), tensors under their released names in model.safetensors."""
    from safetensors.torch import save_file

    from tdrm_cli.generation import save_tokenizer

    path.mkdir(parents=True)
    data = config.to_dict() | {"architectures": [architecture]}
    if auto_map:
        data["auto_map"] = auto_map
    (path / "config.json").write_text(json.dumps(data))
    tensors = {name: t.detach().clone().contiguous() for name, t in state.items()}
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    save_tokenizer(tokenizer, str(path))
    return path


def make_skywork(path):
    import torch
    from transformers import Qwen2ForCausalLM

    tokenizer = bpe_tokenizer(QWEN_TEMPLATE)
    torch.manual_seed(0)
    config = qwen2_config(tokenizer)
    state = Qwen2ForCausalLM(config).state_dict()  # model.* and lm_head.weight
    state["v_head.summary.weight"] = torch.randn(1, HIDDEN)
    state["v_head.summary.bias"] = torch.randn(1)
    auto_map = {"AutoModel": "modeling_qwen2_rm.Qwen2ForPrmModel"}
    return save_folder(path, tokenizer, config, state, "Qwen2ForPrmModel", auto_map)


def make_qwen_prm(path):
    import torch
    from transformers import Qwen2Model

    tokenizer = bpe_tokenizer(QWEN_TEMPLATE)
    torch.manual_seed(1)
    config = qwen2_config(tokenizer)
    state = {f"model.{k}": v for k, v in Qwen2Model(config).state_dict().items()}
    state |= {
        "score.0.weight": torch.randn(HIDDEN, HIDDEN) / HIDDEN**0.5,
        "score.0.bias": torch.randn(HIDDEN) / 10,
        "score.2.weight": torch.randn(2, HIDDEN) / HIDDEN**0.5,
        "score.2.bias": torch.randn(2) / 10,
    }
    auto_map = {
        "AutoConfig": "configuration_qwen2_rm.Qwen2RMConfig",
        "AutoModel": "modeling_qwen2_rm.Qwen2ForProcessRewardModel",
    }
    return save_folder(path, tokenizer, config, state, "Qwen2ForProcessRewardModel", auto_map)


def make_tdrm_paper(path):
    import torch
    from transformers import Qwen2ForSequenceClassification

    tokenizer = bpe_tokenizer(TDRM_TEMPLATE, add_bos=True)
    torch.manual_seed(2)
    config = qwen2_config(tokenizer, num_labels=1, pad_token_id=tokenizer.pad_token_id)
    model = Qwen2ForSequenceClassification(config)
    torch.nn.init.normal_(model.score.weight, std=1.0)
    state = model.state_dict()  # model.* and score.weight
    return save_folder(path, tokenizer, config, state, "Qwen2ForSequenceClassification", None)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("native")
    base = make_tiny_base(root / "causal-lm")
    tdrm = prm_from_base(base).save(root / "tdrm-prm")
    return {
        "skywork": make_skywork(root / "skywork"),
        "qwen-prm": make_qwen_prm(root / "qwen-prm"),
        "tdrm-paper": make_tdrm_paper(root / "tdrm-paper"),
        "tdrm": tdrm,
        "causal-lm": base,
    }


FORMATS = {"skywork": skywork.FORMAT, "qwen-prm": qwen_prm.FORMAT, "tdrm-paper": tdrm_paper.FORMAT}


def load(folders, name, options=None, folder=None):
    fmt = FORMATS[name]
    return fmt.load(read_folder(folder or folders[name]), options or {}, None, "cpu", False)


def solutions(n: int = 5):
    questions, steps = arith_solutions(n, seed=3)
    steps[0] = ArithTask(ops=3).reference_steps(ArithTask(ops=3).problems("train", 1)[0])
    steps[1] = []
    return questions, steps


# ---------------------------------------------------------------- plain-torch references


def backbone_of(folder, strip: str = "model."):
    """A plain transformers Qwen2Model holding the folder's backbone tensors."""
    from safetensors.torch import load_file
    from transformers import Qwen2Config, Qwen2Model

    state = load_file(str(folder / "model.safetensors"))
    model = Qwen2Model(Qwen2Config.from_pretrained(str(folder)))
    inner = {k[len(strip) :]: v for k, v in state.items() if k.startswith(strip)}
    model.load_state_dict(inner, strict=True)
    return model.eval(), state


def hidden_states(model, ids):
    import torch

    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).last_hidden_state[0]


def skywork_reference(folder, question, steps):
    """io_utils.prepare_input(problem, "\\n".join(steps), tokenizer, "\\n") + PRM_MODEL."""
    from tdrm_cli.prm import load_tokenizer

    tokenizer = load_tokenizer(str(folder))
    model, state = backbone_of(folder)
    ids = tokenizer.encode(tokenizer.bos_token + question + "\n")
    flags = [0] * len(ids)
    step_token_id = tokenizer.encode("\n")[-1]
    for step in "\n".join(steps).split("\n"):
        step_ids = (tokenizer.encode(step) if step != "" else []) + [step_token_id]
        ids += step_ids
        flags += [0] * (len(step_ids) - 1) + [1]
    h = hidden_states(model, ids)
    values = (h @ state["v_head.summary.weight"].T + state["v_head.summary.bias"]).sigmoid()
    return [float(values[i, 0]) for i, flag in enumerate(flags) if flag]


def qwen_reference(folder, question, steps):
    """The model card's usage code: chat template, encode, make_step_rewards."""
    from tdrm_cli.prm import load_tokenizer

    tokenizer = load_tokenizer(str(folder))
    model, state = backbone_of(folder)
    messages = [
        {"role": "system", "content": qwen_prm.SYSTEM},
        {"role": "user", "content": question},
        {"role": "assistant", "content": "<extra_0>".join(steps) + "<extra_0>"},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    ids = tokenizer.encode(text)
    h = hidden_states(model, ids)
    h = (h @ state["score.0.weight"].T + state["score.0.bias"]).relu()
    logits = h @ state["score.2.weight"].T + state["score.2.bias"]
    step_sep_id = tokenizer.encode("<extra_0>")[0]
    return [float(logits[i].softmax(-1)[1]) for i, t in enumerate(ids) if t == step_sep_id]


def tdrm_reference(folder, question, steps, separator="\n\n"):
    """tdrm_1_step_train's input per prefix, sigmoid of score at its last token."""
    from tdrm_cli.prm import load_tokenizer

    tokenizer = load_tokenizer(str(folder))
    model, state = backbone_of(folder)
    values = []
    for k in range(1, len(steps) + 1):
        messages = [
            {"role": "user", "content": question},
            {"role": "assistant", "content": separator.join(steps[:k])},
        ]
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        ids = tokenizer(text, truncation=True)["input_ids"]
        logit = hidden_states(model, ids)[-1] @ state["score.weight"][0]
        values.append(float(logit.sigmoid()))
    return values


REFERENCES = {"skywork": skywork_reference, "qwen-prm": qwen_reference,
              "tdrm-paper": tdrm_reference}  # fmt: skip


# ---------------------------------------------------------------- tests


def test_each_format_detects_its_own_layout_only(folders):
    for name, fmt in FORMATS.items():
        for layout, path in folders.items():
            assert fmt.detect(read_folder(path)) == (layout == name), (name, layout)


@pytest.mark.parametrize("name", list(FORMATS))
def test_scores_match_the_family_recipe(folders, name):
    questions, steps = solutions()
    prm = load(folders, name)
    got = prm.score(questions, steps, batch_size=2)
    assert [len(v) for v in got] == [len(s) for s in steps]
    assert any(len(s) >= 3 for s in steps) and any(not s for s in steps)
    spread = []
    for question, solution, values in zip(questions, steps, got, strict=True):
        want = REFERENCES[name](folders[name], question, solution) if solution else []
        assert values == pytest.approx(want, abs=1e-5), (question, solution)
        assert all(0 < v < 1 for v in values)
        spread += values
    assert max(spread) - min(spread) > 1e-3  # the values depend on the input at all


@pytest.mark.parametrize("name", ["skywork", "qwen-prm"])
def test_one_pass_equals_each_prefix_alone(folders, name):
    questions, steps = solutions()
    prm = load(folders, name)
    assert len(prm.sequences(questions[0], steps[0])) == 1
    full = prm.score(questions[:1], steps[:1])[0]
    for k in range(1, len(steps[0]) + 1):
        alone = prm.score(questions[:1], [steps[0][:k]])[0]
        assert alone[-1] == pytest.approx(full[k - 1], abs=1e-5)


def test_tdrm_paper_reads_one_prefix_per_pass_joined_by_the_separator(folders):
    questions, steps = solutions()
    prm = load(folders, "tdrm-paper", {"separator": "\n"})
    assert len(prm.sequences(questions[0], steps[0])) == len(steps[0])
    want = tdrm_reference(folders["tdrm-paper"], questions[0], steps[0], separator="\n")
    assert prm.score(questions[:1], steps[:1])[0] == pytest.approx(want, abs=1e-5)


def one_line_usage_error(call, *needles):
    with pytest.raises(UsageError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and message, message
    for needle in needles:
        assert needle in message, (needle, message)
    return message


@pytest.mark.parametrize("name", list(FORMATS))
def test_unknown_option_is_refused(folders, name):
    one_line_usage_error(lambda: load(folders, name, {"colour": "red"}), "colour", name)
    one_line_usage_error(lambda: load(folders, name, {"agg": "median"}), "agg=median")


def test_empty_option_values_are_refused(folders):
    one_line_usage_error(lambda: load(folders, "skywork", {"step_token": ""}), "step_token")
    one_line_usage_error(lambda: load(folders, "qwen-prm", {"system": ""}), "system")


def without(folder, tmp_path, drop: str):
    """A copy of `folder` whose safetensors lacks the tensors whose names start with `drop`."""
    from safetensors.torch import load_file, save_file

    copy = tmp_path / folder.name
    shutil.copytree(folder, copy)
    state = load_file(str(copy / "model.safetensors"))
    kept = {k: v for k, v in state.items() if not k.startswith(drop)}
    assert len(kept) < len(state)
    save_file(kept, str(copy / "model.safetensors"), metadata={"format": "pt"})
    return copy


@pytest.mark.parametrize(
    "name, head", [("skywork", "v_head."), ("qwen-prm", "score."), ("tdrm-paper", "score.")]
)
def test_a_folder_without_the_head_is_refused(folders, tmp_path, name, head):
    folder = without(folders[name], tmp_path, head)
    one_line_usage_error(lambda: load(folders, name, folder=folder), head)


def test_pickle_only_weights_are_refused(folders, tmp_path):
    import torch
    from safetensors.torch import load_file

    copy = tmp_path / "skywork-bin"
    shutil.copytree(folders["skywork"], copy)
    torch.save(load_file(str(copy / "model.safetensors")), copy / "pytorch_model.bin")
    (copy / "model.safetensors").unlink()
    assert skywork.FORMAT.detect(read_folder(copy))  # by its architecture
    one_line_usage_error(lambda: load(folders, "skywork", folder=copy), "pytorch_model.bin")


def test_a_step_holding_the_qwen_step_token_is_refused(folders):
    prm = load(folders, "qwen-prm")
    one_line_usage_error(lambda: prm.score(["1+1"], [["a <extra_0> b"]]), "<extra_0>")


def test_sharded_safetensors_load_alike(folders, tmp_path):
    """Qwen2.5-Math-PRM ships 4 shards and an index; the head sits in the last one."""
    from safetensors.torch import load_file, save_file

    copy = tmp_path / "qwen-prm-sharded"
    shutil.copytree(folders["qwen-prm"], copy)
    state = load_file(str(copy / "model.safetensors"))
    (copy / "model.safetensors").unlink()
    names = sorted(state, key=lambda n: n.startswith("score."))
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2 :]}  # fmt: skip
    for file, part in shards.items():
        save_file({n: state[n] for n in part}, str(copy / file), metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {n: f for f, part in shards.items() for n in part}}
    (copy / "model.safetensors.index.json").write_text(json.dumps(index))
    questions, steps = solutions()
    assert qwen_prm.FORMAT.detect(read_folder(copy))
    want = load(folders, "qwen-prm").score(questions, steps)
    got = load(folders, "qwen-prm", folder=copy).score(questions, steps)
    assert got == want


def test_the_registry_detects_and_loads_each_native_layout(folders):
    """Through the shared registry (every format, in its order) and the stages' entry point:
    each native layout is claimed by its own format, none by a more generic one."""
    from tdrm_cli.prm_formats import detect, load_scoring_prm

    for name in FORMATS:
        assert detect(read_folder(folders[name])).name == name
        prm = load_scoring_prm(folders[name])
        assert prm.format == name
        want = load(folders, name).score(*solutions(3))
        for got, expected in zip(prm.score(*solutions(3)), want, strict=True):
            assert got == pytest.approx(expected, abs=1e-6)
