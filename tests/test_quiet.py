"""A quiet, legible CLI: one rich bar per stage, library chatter only with `-v`, tables
that fit 80 columns, report plots named once."""

import io
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
from rich.console import Console
from rich.table import Table

from tdrm_cli.console import fitted, progress
from tdrm_cli.report.markdown import copy_plots, plot_names
from tdrm_cli.report.writer import terminal_markdown

LIBRARY_LINES = ("LOAD REPORT", "Loading weights", "Writing model shards")


def tdrm(*args) -> subprocess.CompletedProcess:
    """`tdrm ARGS` in a fresh process on an 80-column 'terminal', as a user runs it."""
    env = {k: v for k, v in os.environ.items() if k != "TDRM_VERBOSE"}
    env["COLUMNS"] = "80"
    return subprocess.run(
        [sys.executable, "-m", "tdrm_cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


def assert_quiet(proc: subprocess.CompletedProcess, out) -> None:
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == str(out)  # the run folder, alone on stdout
    for line in (*LIBRARY_LINES, "{'loss'", "{'train_runtime'", "…", "Traceback"):
        assert line not in proc.stderr, (line, proc.stderr)


def test_collect_and_train_prm_are_quiet_unless_verbose(tiny_policy, tmp_path):
    collect = tmp_path / "collect"
    proc = tdrm("collect", "--policy", tiny_policy, "--out", collect, "--problems", "4",
                "--n", "2", "--mc-rollouts", "2", "--max-new-tokens", "48")  # fmt: skip
    assert_quiet(proc, collect)
    assert "tokens/s" in proc.stderr and "collect summary" in proc.stderr

    train = ("train-prm", "--data", collect, "--max-steps", "3", "--batch-size", "4",
             "--logging-steps", "1", "--report-to", "none")  # fmt: skip
    proc = tdrm(*train, "--out", tmp_path / "prm")
    assert_quiet(proc, tmp_path / "prm")
    assert proc.stderr.count("value head initialised: new, as intended") == 1
    bar = [line for line in proc.stderr.splitlines() if line.startswith("train-prm ━")]
    assert len(bar) == 1 and "3/3" in bar[0] and "loss" in bar[0] and "TD error" in bar[0], bar

    verbose = tdrm("-v", *train, "--out", tmp_path / "prm-v")
    assert verbose.returncode == 0, verbose.stderr
    assert verbose.stdout.strip().splitlines()[-1] == str(tmp_path / "prm-v")
    assert any(line in verbose.stderr for line in LIBRARY_LINES), verbose.stderr
    assert "{'loss'" not in verbose.stderr  # the bar stands in for the Trainer's dicts anyway


def test_the_trainer_bar_ends_when_training_raises():
    from tdrm_cli.trainer_bar import TrainerBar, training_bar

    callbacks = []  # a Trainer's callback list: remove_callback takes an instance or a class

    def remove(callback):
        callbacks[:] = [c for c in callbacks if c is not callback and type(c) is not callback]

    trainer = SimpleNamespace(add_callback=callbacks.append, remove_callback=remove)
    state = SimpleNamespace(is_world_process_zero=True, max_steps=4, global_step=0)
    with pytest.raises(KeyboardInterrupt), training_bar(trainer, "train-prm", {"loss": "loss"}):
        (bar,) = [c for c in callbacks if isinstance(c, TrainerBar)]
        bar.on_train_begin(None, state, None)
        state.global_step = 1
        bar.on_step_end(None, state, None)
        bar.on_log(None, state, None, logs={"loss": 0.6931, "grad_norm": 2.0})
        assert bar.bar.tasks[0].completed == 1 and bar.values == {"loss": "0.6931"}
        raise KeyboardInterrupt
    assert callbacks == []
    with progress() as again:  # one live display at a time: the bar must have stopped
        again.add_task("next", total=1)


def render(renderable, width: int = 80) -> str:
    out = Console(file=io.StringIO(), width=width, color_system=None)
    out.print(renderable)
    return out.file.getvalue()


def test_wide_tables_fit_80_columns_without_cutting_a_header():
    header = ["PRM", "step AUROC", "outcome AUROC", "first-error F1", "acc (erroneous)",
              "acc (correct)", "ECE", "smoothness/token", "degenerate"]  # fmt: skip
    for columns, whole in ((6, True), (9, False)):
        table = Table(title="a wide table")
        for name in header[:columns]:
            table.add_column(name)
        table.add_row("policy-likelihood", *["0.123"] * (columns - 1))
        text = render(fitted(table, 80))
        assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80, text
        words = ("policy-likelihood", "first-error", "(erroneous)", "outcome", "AUROC")
        # every word stays whole while the room allows; 9 columns fold the longest ones
        assert all(word in text for word in words) is whole, text

    markdown = "| " + " | ".join(header[:6]) + " |\n|" + " --- |" * 6 + "\n"
    markdown += "| policy-likelihood | 0.5 | 0.5 | 0.5 | 1.000 | – |\n"
    text = render(terminal_markdown(markdown))
    assert "…" not in text and "first-error" in text and "(erroneous)" in text, text


def test_report_plots_are_named_once(tmp_path):
    runs = {name: tmp_path / name for name in ("bon", "bon-mc", "search")}
    for path in runs.values():
        path.mkdir()
    for name in ("bon", "bon-mc"):
        (runs[name] / "bon_accuracy.png").write_bytes(name.encode())
    (runs["search"] / "search_accuracy_vs_tokens.png").write_bytes(b"search")
    (runs["search"] / "value_trajectories.png").write_bytes(b"own")
    names = plot_names(list(runs.values()), {"value_trajectories.png"})
    assert sorted(names.values()) == [
        "bon-bon_accuracy.png",  # two runs have a bon_accuracy.png: run folder first
        "bon-mc-bon_accuracy.png",
        "search-value_trajectories.png",  # eval draws its own value_trajectories.png
        "search_accuracy_vs_tokens.png",  # unique: its own name
    ]
    out = tmp_path / "eval"
    out.mkdir()
    text = copy_plots(runs["bon-mc"], out, "best-of-N", names)
    assert text == "\n![best-of-N](bon-mc-bon_accuracy.png)\n"
    assert (out / "bon-mc-bon_accuracy.png").read_bytes() == b"bon-mc"


def test_a_new_value_head_is_one_line_and_other_missing_weights_a_warning(tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    from tdrm_cli.prm import load_value_model
    from test_prm import make_tiny_base

    base = make_tiny_base(tmp_path / "base")
    new_head = "value head initialised: new, as intended"
    load_value_model(str(base), 0, "base", new_head=new_head)
    err = capsys.readouterr().err
    assert err.count(new_head) == 1 and "warning" not in err, err

    (weights,) = base.glob("*.safetensors")
    tensors = load_file(weights)
    dropped = "model.layers.1.mlp.up_proj.weight"
    del tensors[dropped]
    save_file(tensors, weights, metadata={"format": "pt"})
    load_value_model(str(base), 0, "base", new_head=new_head)
    err = capsys.readouterr().err
    line = f"warning: --base {base}: weights not in the checkpoint start at random (1: {dropped})"
    assert line in " ".join(err.split()) and err.count(new_head) == 1, err
    load_value_model(str(base), 0, "prm", trained=True)  # a PRM without its head: warned too
    err = " ".join(capsys.readouterr().err.split())
    assert "start at random (3: model.layers.1.mlp.up_proj.weight, score.bias" in err, err
