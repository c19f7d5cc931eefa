"""`tdrm eval` end to end: policy metrics, PRM step quality, ProcessBench files, report.md."""

import json
import shutil

import pytest

from conftest import invoke
from tdrm_cli.runs import read_manifest


def test_eval_policy_and_prm(tiny_policy, tiny_prm, tmp_path):
    out = tmp_path / "eval"
    result = invoke(
        "eval",
        "--policy",
        tiny_policy,
        "--prm",
        tiny_prm,
        "--problems",
        "6",
        "--k",
        "2",
        "--max-new-tokens",
        "80",
        "--out",
        out,
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1] == str(out)
    metrics = json.loads((out / "metrics.json").read_text())
    policy = metrics["policy"]
    assert policy["problems"] == 6 and 0 <= policy["pass@1"] <= policy["pass@2"] <= 1
    assert policy["maj@2"] <= policy["pass@2"]
    prm = metrics["prm"]["prm"]
    assert 0 < prm["solutions"] <= 6 * 2  # the samples with at least one step
    assert prm["smoothness"] is None or prm["smoothness"] >= 0
    assert isinstance(prm["degenerate"], bool) and isinstance(prm["degenerate_reasons"], list)
    held_out = json.loads((tiny_prm / "metrics.json").read_text())["degenerate"]
    assert prm["train_prm_degenerate"] is held_out
    coupling = metrics["coupling"]
    assert sum(coupling["samples_by_first_error"].values()) == 6 * 2
    assert coupling["correct_samples"] == round(policy["sample_accuracy"] * 12)
    report = (out / "report.md").read_text()
    assert (
        "greedy pass@1" in report and "step AUROC" in report and "value_trajectories.png" in report
    )
    assert "## Process–outcome coupling" in report and "| first wrong step (0-based) |" in report
    assert "| smoothness/token | degenerate |" in report
    assert read_manifest(out)["metrics"]["prm:prm/degenerate"] is prm["degenerate"]
    assert (out / "value_trajectories.png").stat().st_size > 1000
    manifest = read_manifest(out)
    assert manifest["status"] == "complete" and set(manifest["inputs"]) == {"policy", "prm"}
    baseline = metrics["prm"]["policy-likelihood"]  # the untrained row, on the same samples
    assert baseline["solutions"] == prm["solutions"] and baseline["train_prm_degenerate"] is None
    assert "| policy-likelihood |" in report


def write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def test_processbench_file_end_to_end(tiny_prm, tmp_path):
    rows = [
        {"problem": "3+4-2", "steps": ["3+4=7", "7-2=5", "answer 5"], "label": -1},
        {"problem": "3+4-2", "steps": ["3+4=8", "8-2=6", "answer 6"], "label": 0},
        {"problem": "9-1+5", "steps": ["9-1=8", "8+5=12", "answer 12"], "label": 1},
        {"problem": "9-1+5", "steps": ["9-1=8", "8+5=13", "answer 13"], "label": -1},
    ]
    path = tmp_path / "pb.jsonl"
    write_jsonl(path, rows)
    out = tmp_path / "eval"
    result = invoke("eval", "--prm", tiny_prm, "--steps-file", path, "--out", out)
    assert result.exit_code == 0, result.output
    section = json.loads((out / "metrics.json").read_text())["steps_file"]["prm"]
    assert section["solutions"] == 4
    assert 0.0 <= section["first_error_f1"] <= 1.0 and 0.0 <= section["step_auroc"] <= 1.0
    assert "PRM step quality on" in (out / "report.md").read_text()


def test_prm_names_are_folder_names_made_distinct_by_their_paths():
    from tdrm_cli.errors import UsageError
    from tdrm_cli.stages.eval import prm_names

    demo = ["runs/demo/prm-td", "runs/demo/prm-mc"]
    assert prm_names(demo) == {"runs/demo/prm-td": "prm-td", "runs/demo/prm-mc": "prm-mc"}
    assert list(prm_names(["a/model", "b/model", "c/prm"]).values()) == [
        "a/model",
        "b/model",
        "prm",
    ]
    assert list(prm_names(["x/a/model", "y/a/model", "/runs/a/model/"]).values()) == [
        "x/a/model",
        "y/a/model",
        "runs/a/model",
    ]
    assert prm_names(["runs/p", "runs/p/", "runs/p"]) == {"runs/p": "p", "runs/p/": "p"}
    named = prm_names(["runs/policy-likelihood"], baseline=True)
    assert named == {"runs/policy-likelihood": "runs/policy-likelihood"}
    with pytest.raises(UsageError, match="named like the 'policy-likelihood' baseline"):
        prm_names(["policy-likelihood"], baseline=True)


def test_prms_in_folders_of_one_name_are_two_rows(tiny_prm, tmp_path):
    copies = [tmp_path / parent / "prm" for parent in ("a", "b")]
    for copy in copies:
        shutil.copytree(tiny_prm, copy)
    path = tmp_path / "pb.jsonl"
    write_jsonl(path, [{"problem": "3+4-2", "steps": ["3+4=7", "7-2=5"], "label": -1}])
    out = tmp_path / "eval"
    result = invoke("eval", *("--prm", copies[0], "--prm", copies[1]), "--steps-file", path,
                    "--out", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert set(json.loads((out / "metrics.json").read_text())["steps_file"]) == {"a/prm", "b/prm"}


def test_bad_steps_file_names_file_line_and_field(tiny_prm, tmp_path):
    path = tmp_path / "pb.jsonl"
    write_jsonl(
        path,
        [{"problem": "1+1", "steps": ["1+1=2"], "label": -1}, {"problem": "x", "steps": ["a"]}],
    )
    out = tmp_path / "eval"
    result = invoke("eval", "--prm", tiny_prm, "--steps-file", path, "--out", out)
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: {path} line 2: missing field 'label'"
    assert not out.exists()
    path.write_text('{"problem": "1+1", "steps": ["1+1=2"], "label": 3}\n')
    result = invoke("eval", "--prm", tiny_prm, "--steps-file", path, "--out", out)
    assert result.exit_code == 2 and "line 1: field 'label' 3 is outside -1..0" in result.stderr


def test_eval_needs_a_policy_or_a_steps_file(tmp_path):
    result = invoke("eval", "--out", tmp_path / "e")
    assert result.exit_code == 2 and "--policy is required" in result.stderr


def test_update_readme_replaces_only_the_marked_section(tmp_path):
    from tdrm_cli.report import README_BEGIN, README_END, update_readme

    report = tmp_path / "report.md"
    report.write_text("# tdrm report\n\n## Policy\n\n| a |\n| --- |\n| 0.5 |\n\n![plot](x.png)\n")
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{README_BEGIN}\nold table\n{README_END}\noutro\n")
    update_readme(report, readme)
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith(f"{README_END}\noutro\n")
    assert (
        "old table" not in text
        and "| 0.5 |" in text
        and "#### Policy" in text
        and "x.png" not in text
    )


def test_readme_results_come_from_a_report():
    from pathlib import Path

    from tdrm_cli.report import README_BEGIN, README_END

    text = (Path(__file__).parent.parent / "README.md").read_text()
    section = text.split(README_BEGIN)[1].split(README_END)[0]
    assert "### Demo report" in section and "| PRM | step AUROC |" in section


def test_report_marks_degenerate_prms_and_shows_coupling():
    from tdrm_cli.report import coupling_section, degenerate_notes

    text = coupling_section(
        {
            "coupling": 0.25,
            "coupled_correct": 1,
            "correct_samples": 4,
            "p_correct_by_first_error": {"0": 0.5, "1": None, "none": 1.0},
            "samples_by_first_error": {"0": 6, "1": 0, "none": 1},
        }
    )
    assert "1 of 4 correct samples (25.0%) have every step right." in text
    assert "| step 0 | 6 | 0.500 |" in text and "| step 1 | 0 | – |" in text
    assert "| none | 1 | 1.000 |" in text
    notes = degenerate_notes(
        {
            "flat": {"degenerate": True, "degenerate_reasons": ["value std 0.0001 < 0.01"]},
            "good": {"degenerate": False, "degenerate_reasons": [], "train_prm_degenerate": True},
        }
    )
    assert "- `flat` learned nothing beyond the base rate on these samples: value std" in notes
    assert "- `good` was flagged degenerate by train-prm on its held-out rollouts." in notes
    assert "`good` learned nothing" not in notes
