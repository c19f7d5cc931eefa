"""The real clients: OpenRLHF 0.11.2's and verl 0.9.1's own reward code against `tdrm serve`.

The wheels are `pip install --no-deps --target`-ed into a temporary folder (from PyPI, or
from `$TDRM_INTEROP_WHEELS/<name>-<version>-*.whl` when such a file is there) and their code
runs in a subprocess (tests/interop_clients.py, which says what it stands in for and why)
against two servers on loopback: `--reward prm` and `--reward prm+rlvr`. Every reward is
compared with the in-process `PRMReward` / `VerifierReward` on the same saved PRM.
Slow (pip, two servers, two subprocesses): `make test-slow` runs it; under CI=true a failed
install fails instead of skipping.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import missing
from test_serve import TASK, Server, close, make_prm_dir, rollouts

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PRM_WEIGHT = 0.3
# the two wheels, then what their reward path runs on (their other dependencies it never imports)
WHEELS = ["openrlhf==0.11.2", "verl==0.9.1"]
RUNTIME = [
    # OpenRLHF's HTTP client (openrlhf/utils/agent.py)
    "aiohttp==3.14.5", "aiohappyeyeballs==2.7.1", "aiosignal==1.4.0", "attrs==26.1.0",
    "frozenlist==1.8.0", "multidict==7.2.1", "propcache==0.5.4", "yarl==1.25.1",
    # verl's DataProto (tensordict) and config (omegaconf, composed by hydra)
    "tensordict==0.10.0", "pyvers==0.1.0", "cloudpickle==3.1.3", "orjson==3.13.0",
    "importlib_metadata==10.2.0", "zipp==4.1.2",
    "omegaconf==2.3.0", "antlr4-python3-runtime==4.9.3", "hydra-core==1.3.2",
]  # fmt: skip
# README, "Serving a PRM to OpenRLHF and verl": the flags and overrides it tells users to pass
OPENRLHF_FLAGS = ["--data.input_key", "question", "--data.input_template", "{}\n\n"]
OPENRLHF_OLD_FLAGS = ["--remote_rm_url", "--label_key", "--input_template", "--prompt_data"]
VERL_HOOK = "pkg://tdrm_cli.integrations.verl"
VERL_OVERRIDES = [
    f"reward.custom_reward_function.path={VERL_HOOK}",
    "reward.custom_reward_function.name=compute_score",
]


def requirement(pin: str) -> str:
    """`pin`, or the path of a local wheel for it in $TDRM_INTEROP_WHEELS."""
    folder = os.environ.get("TDRM_INTEROP_WHEELS")
    name, version = pin.split("==")
    if folder:
        stem = f"{name.replace('-', '_')}-{version}-".lower()
        found = sorted(p for p in Path(folder).glob("*.whl") if p.name.lower().startswith(stem))
        if found:
            return str(found[0])
    return pin


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("interop-site")
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--disable-pip-version-check"]
    cmd += ["--target", str(target), *(requirement(p) for p in WHEELS + RUNTIME)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired:
        missing("pip install of the OpenRLHF/verl wheels timed out")
    if done.returncode != 0:
        errors = [line for line in done.stderr.splitlines() if line.startswith("ERROR")]
        missing(f"cannot pip install the OpenRLHF/verl wheels: {(errors or ['?'])[-1]}")
    return target


@pytest.fixture(scope="module")
def prm_dir(tmp_path_factory):
    return make_prm_dir(tmp_path_factory.mktemp("interop") / "prm")


@pytest.fixture(scope="module")
def urls(prm_dir, tmp_path_factory):
    """{"prm": url, "prm+rlvr": url} of two servers on the PRM (no API key: OpenRLHF sends none)."""
    logs = tmp_path_factory.mktemp("interop-logs")
    servers = {
        "prm": Server(prm_dir, logs / "prm.log"),
        "prm+rlvr": Server(
            prm_dir, logs / "rlvr.log", "--reward", "prm+rlvr", "--prm-weight", str(PRM_WEIGHT)
        ),
    }
    try:
        for server in servers.values():
            server.wait_ready()
        yield {mode: f"http://127.0.0.1:{s.port}" for mode, s in servers.items()}
    finally:
        for server in servers.values():
            server.stop()


@pytest.fixture(scope="module")
def prm(prm_dir):
    from tdrm_cli.prm import load_prm

    return load_prm(prm_dir)


@pytest.fixture(scope="module")
def expected(prm):
    """Rollouts (right, cut, wrong, empty answers) and tdrm's in-process rewards for them."""
    from tdrm_cli.rewards import PRMReward, VerifierReward

    questions, prompts, completions, golds = rollouts(prm, 6)
    kw = {"prompts": prompts, "completions": completions, "question": questions}
    prm_scores = PRMReward(prm)(**kw)
    verdicts = VerifierReward(TASK)(**kw, gold=golds)
    assert 0.0 < sum(verdicts) < len(verdicts)  # both verdicts occur
    steps = [float(len(c.split(prm.separator))) if c else 0.0 for c in completions]
    mixed = [
        PRM_WEIGHT * p + (1 - PRM_WEIGHT) * v for p, v in zip(prm_scores, verdicts, strict=True)
    ]
    return {
        "questions": questions, "prompts": prompts, "completions": completions, "golds": golds,
        "prm": prm_scores, "verifier": verdicts, "mixed": mixed, "num_steps": steps,
    }  # fmt: skip


def run_client(which: str, site: Path, spec: dict, tmp_path: Path) -> dict:
    spec_path, out_path = tmp_path / f"{which}.json", tmp_path / f"{which}-out.json"
    spec_path.write_text(json.dumps(spec))
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(ROOT / "src")])
    env.pop("TDRM_SERVE_API_KEY", None)
    done = subprocess.run(
        [sys.executable, str(HERE / "interop_clients.py"), which, str(spec_path), str(out_path)],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    return json.loads(out_path.read_text())


def flat(values) -> list[float]:
    """OpenRLHF keeps one row per sample ([[x], [y]]): the values in order."""
    return [x for row in values for x in (row if isinstance(row, list) else [row])]


def readme_section() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("## Serving a PRM to OpenRLHF and verl")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else len(text)]


# ---------------------------------------------------------------- OpenRLHF 0.11.2


@pytest.fixture(scope="module")
def openrlhf(site, urls, expected, prm_dir, tmp_path_factory):
    rows = [
        {"question": q, "answer": g, "completion": c, "eos": i % 2 == 0 or not c}
        for i, (q, g, c) in enumerate(
            zip(expected["questions"], expected["golds"], expected["completions"], strict=True)
        )
    ]
    runs = [
        [*OPENRLHF_FLAGS, "--reward.remote_url", f"{urls['prm']}/get_reward"],
        [*OPENRLHF_FLAGS, "--data.label_key", "answer"]
        + ["--reward.remote_url", f"{urls['prm+rlvr']}/get_reward"],
    ]
    spec = {
        "tokenizer": str(prm_dir), "rows": rows, "max_len": 512, "max_new_tokens": 128,
        "old_flags": OPENRLHF_OLD_FLAGS, "runs": [{"flags": flags} for flags in runs],
    }  # fmt: skip
    return run_client("openrlhf", site, spec, tmp_path_factory.mktemp("openrlhf"))


def test_openrlhf_flags_are_the_current_ones(openrlhf):
    for flag, error in openrlhf["rejected"].items():
        assert "unrecognized arguments" in error and flag in error, (flag, error)
    section = readme_section()
    for flag in [*OPENRLHF_FLAGS[::2], "--reward.remote_url", "--data.label_key"]:
        assert flag in section, flag


def test_openrlhf_client_gets_tdrms_rewards_per_sample(openrlhf, expected):
    plain, mixed = openrlhf["runs"]
    n = len(expected["prm"])
    # the prompts OpenRLHF built from the dataset with --data.input_template are the PRM's
    assert [r["prompt"] for r in plain["responses"]] == expected["prompts"]
    # without --data.label_key OpenRLHF sends "" labels; a plain PRM server takes them
    assert plain["labels"] == [""] * n and mixed["labels"] == expected["golds"]
    for run, reward, score in (
        (plain, expected["prm"], expected["prm"]),
        (mixed, expected["mixed"], expected["verifier"]),
    ):
        assert all(r["reward"] is not None for r in run["responses"]), "a reward request failed"
        assert close(flat(r["reward"] for r in run["responses"]), reward)
        assert close(run["dynamic_filter_scores"], score)
        # concat_experiences (what split_rollout_samples hands to the trainer): one row each
        batch = run["batch"]
        assert close(flat(batch["rewards"]), reward) and close(flat(batch["scores"]), score)
        assert close(flat(batch["info"]["reward"]), reward)
        assert close(flat(batch["info"]["prm_score"]), expected["prm"])
        assert flat(batch["info"]["num_steps"]) == expected["num_steps"]
        rows = {len(batch["rewards"]), len(batch["scores"]), len(batch["info"]["prm_score"])}
        assert rows == {n}
    assert "verifier" not in plain["batch"]["info"]
    assert flat(mixed["batch"]["info"]["verifier"]) == expected["verifier"]


# ---------------------------------------------------------------- verl 0.9.1


@pytest.fixture(scope="module")
def verl(site, urls, expected, prm_dir, tmp_path_factory):
    rows = [
        {"prompt": p, "completion": c, "gold": g, "data_source": "arith",
         "extra_info": {"question": q, "index": i, "split": "train"}}
        for i, (q, p, c, g) in enumerate(zip(
            expected["questions"], expected["prompts"], expected["completions"],
            expected["golds"], strict=True,
        ))
    ]  # fmt: skip
    spec = {
        "tokenizer": str(prm_dir), "rows": rows, "urls": [urls["prm"], urls["prm+rlvr"]],
        "overrides": VERL_OVERRIDES,
        # the top-level key older verl read (README's old instructions)
        "legacy_overrides": [o.removeprefix("reward.") for o in VERL_OVERRIDES],
    }  # fmt: skip
    return run_client("verl", site, spec, tmp_path_factory.mktemp("verl"))


def test_verl_config_keys_and_managers(verl):
    assert verl["batch_manager"] == "Unknown reward manager: batch"
    assert {"naive", "dapo"} <= set(verl["registered"]) and "batch" not in verl["registered"]
    # verl 0.9.1's trainer reads reward.custom_reward_function only: the old key is ignored
    assert verl["legacy_hook_loaded"] is False
    section = readme_section()
    for override in VERL_OVERRIDES:
        assert override.split("=")[0] in section, override
    assert VERL_HOOK in section


def test_verl_naive_manager_gets_tdrms_rewards_and_breakdown(verl, expected):
    plain, mixed = verl["runs"]
    assert plain["manager"] == mixed["manager"] == "NaiveRewardManager"  # the default
    for run, reward in ((plain, expected["prm"]), (mixed, expected["mixed"])):
        assert close(run["reward_scores"], reward)
        # assemble_rm_scores: the reward sits on the last response token, nowhere else
        assert close(run["rm_scores_at_last_token"], reward)
        assert close(run["rm_scores_sum"], reward)
        extra = run["reward_extra_info"]
        assert close(extra["score"], reward) and close(extra["prm_score"], expected["prm"])
        assert extra["num_steps"] == expected["num_steps"] and "acc" not in extra
    assert sorted(plain["reward_extra_info"]) == ["num_steps", "prm_score", "score"]
    assert mixed["reward_extra_info"]["verifier"] == expected["verifier"]
