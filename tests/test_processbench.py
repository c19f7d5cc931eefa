"""The official ProcessBench protocol: fixed threshold, per subset, average F1; subsets read
from a field or the released ids; `tdrm eval --steps-file` reports it for every PRM."""

import json
import shutil
import statistics

import pytest

from conftest import invoke, one_line_error
from tdrm_cli import metrics as M
from tdrm_cli.configs.sample import EvalConfig
from tdrm_cli.errors import UsageError
from tdrm_cli.runs import read_manifest
from tdrm_cli.stages.eval import read_steps_file


def test_official_protocol_by_hand():
    # Threshold 0.5; predicted first error = first step scoring strictly below it, else -1.
    trajectories, gold, subsets = zip(
        # math rows come first in the file; the table still lists gsm8k first.
        ([0.5, 0.49], 1, "math"),  # E: 0.5 is not below 0.5 -> pred 1 = label   (erroneous, hit)
        ([0.9, 0.3, 0.8], 1, "gsm8k"),  # A: pred 1 = label 1                    (erroneous, hit)
        ([0.6, 0.7, 0.9], -1, "math"),  # F: nothing below -> pred -1             (correct, hit)
        ([0.7, 0.6, 0.2], 0, "gsm8k"),  # B: pred 2, label 0                      (erroneous, miss)
        ([0.1, 0.9], -1, "math"),  # G: pred 0, label -1                          (correct, miss)
        ([0.9, 0.95], -1, "gsm8k"),  # C: pred -1                                 (correct, hit)
        ([0.8, 0.4], -1, "gsm8k"),  # D: pred 1, label -1                         (correct, miss)
        strict=True,
    )
    result = M.processbench_official(trajectories, gold, subsets)
    # gsm8k: erroneous A hit, B miss -> 1/2; correct C hit, D miss -> 1/2; F1 = 2*.5*.5/1 = 0.5
    # math: erroneous E hit -> 1/1; correct F hit, G miss -> 1/2; F1 = 2*1*.5/1.5 = 2/3
    # average F1 = (0.5 + 2/3) / 2 = 7/12 (unweighted over subsets, as the paper's "Avg.")
    assert result["threshold"] == 0.5
    assert list(result["subsets"]) == ["gsm8k", "math"]
    assert result["subsets"]["gsm8k"] == {
        "solutions": 4,
        "erroneous": 2,
        "error_acc": 0.5,
        "correct_acc": 0.5,
        "f1": 0.5,
    }
    math_ = result["subsets"]["math"]
    assert (math_["solutions"], math_["erroneous"]) == (3, 1)
    assert math_["error_acc"] == 1.0 and math_["correct_acc"] == 0.5
    assert math_["f1"] == pytest.approx(2 / 3)
    assert result["average_f1"] == pytest.approx(7 / 12)
    # At 0.35, A's 0.3 is still the first error but D's 0.4 is not (gsm8k correct 2/2,
    # F1 = 2*.5*1/1.5 = 2/3), nor E's 0.49 (math erroneous 0/1, F1 0): average 1/3.
    moved = M.processbench_official(trajectories, gold, subsets, threshold=0.35)
    assert moved["subsets"]["gsm8k"]["correct_acc"] == 1.0
    assert moved["subsets"]["gsm8k"]["f1"] == pytest.approx(2 / 3)
    assert moved["subsets"]["math"]["error_acc"] == 0.0 and moved["subsets"]["math"]["f1"] == 0.0
    assert moved["average_f1"] == pytest.approx(1 / 3)


def test_official_protocol_edge_cases():
    # Both accuracies 0: F1 0 (the published script's 0/0 would print nan).
    zero = M.processbench_official([[0.9], [0.1]], [0, -1], ["a", "a"])
    assert zero["subsets"]["a"]["f1"] == 0.0 and zero["average_f1"] == 0.0
    # A subset without erroneous solutions has no F1, so no average either.
    lopsided = M.processbench_official([[0.9], [0.9], [0.1]], [-1, 0, 0], ["a", "b", "b"])
    assert lopsided["subsets"]["a"]["error_acc"] is None
    assert lopsided["subsets"]["a"]["correct_acc"] == 1.0
    assert lopsided["subsets"]["a"]["f1"] is None and lopsided["average_f1"] is None
    # One subset: its F1 is the average.
    one = M.processbench_official([[0.9], [0.1]], [-1, 0], ["gsm8k", "gsm8k"])
    assert one["average_f1"] == one["subsets"]["gsm8k"]["f1"] == 1.0


def write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_subset_from_field_split_id_or_file_name(tmp_path):
    base = {"problem": "1+1", "steps": ["1+1=2"], "label": -1}
    path = write_jsonl(
        tmp_path / "mixed.jsonl",
        [
            {**base, "subset": "math", "id": "gsm8k-3"},  # the field wins over the id
            {**base, "split": "omnimath"},
            {**base, "id": "olympiadbench-12"},  # the released data's ids
            {**base, "id": "no-number-here"},  # not `<subset>-<n>`: the file's name
            base,
        ],
    )
    assert [r["subset"] for r in read_steps_file(str(path))] == [
        "math",
        "omnimath",
        "olympiadbench",
        "mixed",
        "mixed",
    ]
    write_jsonl(path, [{**base, "subset": 3}])
    with pytest.raises(UsageError, match=r"line 1: field 'subset' must be a non-empty string"):
        read_steps_file(str(path))


def test_threshold_default_and_bad_values(tmp_path):
    assert EvalConfig(prm=["p"], steps_file="f").threshold == M.PROCESSBENCH_THRESHOLD == 0.5
    for bad in ("1.5", "0", "-0.2"):
        result = invoke("eval", "--prm", "p", "--steps-file", "f", "--threshold", bad,
                        "--out", tmp_path / "e")  # fmt: skip
        one_line_error(result, f"--threshold {float(bad)}: must be in (0, 1)")
    result = invoke("eval", "--prm", "p", "--steps-file", "f", "--threshold", "nan",
                    "--out", tmp_path / "e")  # fmt: skip
    one_line_error(result, "--threshold", "finite")
    assert not (tmp_path / "e").exists()


PROBLEMS = [("3+4-2", 5), ("9-1+5", 13), ("8-3+2", 7)]


def steps_rows() -> list[dict]:
    """Two subsets by id prefix, as in the released data, each with erroneous and correct rows."""
    rows = []
    for subset in ("math", "gsm8k"):
        for i, (problem, answer) in enumerate(PROBLEMS):
            a, op1, b, op2, c = problem
            first = int(a) + int(b) if op1 == "+" else int(a) - int(b)
            wrong = i % 2 == 1
            steps = [f"{a}{op1}{b}={first + wrong}", f"{first + wrong}{op2}{c}={answer + wrong}",
                     f"answer {answer + wrong}"]  # fmt: skip
            rows.append({"id": f"{subset}-{len(rows)}", "problem": problem, "steps": steps,
                         "label": 0 if wrong else -1})  # fmt: skip
    return rows


def test_eval_steps_file_reports_the_official_table(tiny_prm, tmp_path):
    from tdrm_cli.prm import load_prm

    copies = [tmp_path / parent / "prm" for parent in ("a", "b")]
    for copy in copies:
        shutil.copytree(tiny_prm, copy)
    rows = steps_rows()
    path = write_jsonl(tmp_path / "pb.jsonl", rows)
    prm = load_prm(tiny_prm, "prm")
    values = prm.score([r["problem"] for r in rows], [r["steps"] for r in rows], batch_size=8)
    # A threshold inside the PRM's own scores, so that some steps fall below it and some not.
    threshold = statistics.median(v for vs in values for v in vs)
    assert 0 < threshold < 1
    assert len({M.first_error(v, threshold) for v in values}) > 1  # not one prediction for all
    out = tmp_path / "eval"
    result = invoke("eval", "--prm", copies[0], "--prm", copies[1], "--steps-file", path,
                    "--threshold", repr(threshold), "--out", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    results = json.loads((out / "metrics.json").read_text())["steps_file"]
    expected = M.processbench_official(
        values, [r["label"] for r in rows], [r["id"].split("-")[0] for r in rows], threshold
    )
    assert set(results) == {"a/prm", "b/prm"}
    for name in results:
        bench = results[name]["processbench"]
        assert bench["threshold"] == threshold and list(bench["subsets"]) == ["gsm8k", "math"]
        for subset, numbers in expected["subsets"].items():
            assert bench["subsets"][subset]["solutions"] == numbers["solutions"] == 3
            for key in ("error_acc", "correct_acc", "f1"):
                assert bench["subsets"][subset][key] == pytest.approx(numbers[key], abs=1e-9)
        assert bench["average_f1"] == pytest.approx(expected["average_f1"], abs=1e-9)
        assert "first_error_f1" in results[name]  # the tuned-threshold numbers stay beside it
    report = (out / "report.md").read_text()
    header = "| PRM | gsm8k (err / correct / F1) | math (err / correct / F1) | average F1 |"
    assert "the official protocol" in report and header in report
    cells = [
        " / ".join(f"{expected['subsets'][s][k]:.3f}" for k in ("error_acc", "correct_acc", "f1"))
        for s in ("gsm8k", "math")
    ]
    for name in ("a/prm", "b/prm"):
        assert f"| {name} | {cells[0]} | {cells[1]} | {expected['average_f1']:.3f} |" in report
    assert report.index("the official protocol") < report.index("(tuned threshold)")
    assert "official protocol" in result.stderr and "average F1" in result.stderr
    manifest = read_manifest(out)["metrics"]
    assert manifest["steps_file:a/prm/processbench_average_f1"] == round(expected["average_f1"], 4)


def test_the_released_json_list_reads_like_jsonl(tmp_path):
    """The release ships `gsm8k.json` etc. as JSON lists: read alike, errors on their line."""
    items = [
        {"id": "gsm8k-0", "problem": "1+1", "steps": ["1+1=2"], "label": -1,
         "final_answer_correct": True},
        {"id": "gsm8k-1", "problem": "2+2", "steps": ["2+2=5", "so 5"], "label": 0,
         "final_answer_correct": False},
    ]  # fmt: skip
    listed = tmp_path / "gsm8k.json"
    listed.write_text(json.dumps(items, indent=2))
    lines = tmp_path / "gsm8k.jsonl"
    write_jsonl(lines, items)
    assert read_steps_file(str(listed)) == read_steps_file(str(lines))
    bad = [items[0], {**items[1], "label": "0"}]
    listed.write_text(json.dumps(bad, indent=2))
    starts = [i for i, line in enumerate(json.dumps(bad, indent=2).splitlines()) if line == "  {"]
    where = 1 + starts[1]  # the line the second item starts on
    with pytest.raises(UsageError, match=rf"gsm8k.json line {where}: field 'label' must be int"):
        read_steps_file(str(listed))
