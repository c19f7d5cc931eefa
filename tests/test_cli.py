"""Every command has --help; the STAGES table and the app agree; bad input exits 2."""

import pytest

from conftest import invoke
from tdrm_cli.cli import STAGES, app


def registered() -> set[str]:
    import typer.main

    return set(typer.main.get_command(app).commands)


def test_stages_table_matches_app():
    assert set(STAGES) <= registered()
    assert {"runs", "env"} <= registered()


@pytest.mark.parametrize("command", sorted(registered()))
def test_help(command):
    result = invoke(command, "--help")
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_version_and_root_help():
    assert invoke("--version").stdout.startswith("tdrm ")
    assert "sft" in invoke("--help").output


def test_unknown_yaml_key_is_one_line_exit_2(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("bogus: 1\n")
    result = invoke("sft", "--config", path, "--out", tmp_path / "r")
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: {path}: unknown key 'bogus' for SFTConfig"
    assert not (tmp_path / "r").exists()


def test_missing_config_file(tmp_path):
    result = invoke("sft", "--config", tmp_path / "nope.yaml")
    assert result.exit_code == 2
    assert "config file not found" in result.stderr and "Traceback" not in result.output


def test_bad_task_spec(tmp_path):
    result = invoke("sft", "--task", "nope", "--out", tmp_path / "r")
    assert result.exit_code == 2 and "unknown task 'nope'" in result.stderr


def test_runs_and_env(tmp_path, tiny_policy):
    result = invoke("runs", tiny_policy.parent)
    assert result.exit_code == 0 and "sft" in result.output and "complete" in result.output
    assert invoke("runs", tmp_path / "missing").exit_code == 2
    result = invoke("env")
    assert result.exit_code == 0 and "torch" in result.output


def test_the_cli_loads_no_heavy_library():
    """`tdrm --help` stays instant: the stages import torch and the server its stack."""
    import subprocess
    import sys

    heavy = ("torch", "transformers", "trl", "fastapi", "uvicorn")
    code = f"import sys, tdrm_cli.cli; print([m for m in {heavy!r} if m in sys.modules])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stderr


def test_serve_takes_a_config_file_and_needs_a_prm(tmp_path):
    path = tmp_path / "serve.yaml"
    path.write_text("prm: runs/prm\nreward: rlvr\n")
    result = invoke("serve", "--config", path)
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: {path}: --reward rlvr: expected prm or prm+rlvr"
    result = invoke("serve", "--port", "5001")
    assert result.exit_code == 2 and result.stderr.strip() == "error: --prm is required"
