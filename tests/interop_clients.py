"""OpenRLHF's and verl's own reward code, run against a `tdrm serve` (by test_interop.py).

    python tests/interop_clients.py {openrlhf,verl} SPEC.json OUT.json

OpenRLHF 0.11.2 and verl 0.9.1 come from wheels `pip install --no-deps --target`-ed onto
PYTHONPATH, with the few small packages their reward path really runs on (aiohttp for
OpenRLHF's HTTP client; tensordict for verl's DataProto, omegaconf and hydra for its config).
Every function and class that produces or reads the reward is theirs, unchanged. Their
modules also import, at the top, packages too heavy to install here (Ray, vLLM) for code
this path never runs. Only those are replaced, by `StandIn` modules that hold the names
the imports ask for and raise on anything else, so any use by the code under test fails
the run instead of passing silently:

- `ray` (both): OpenRLHF's `samples_generator.py` needs it for its Ray dispatch only
  (`ray.wait`/`ray.get` in `_generate_vllm`), never in `_process_response_into_experience`.
  verl's `protocol.py` names `ray.ObjectRef` (annotations, isinstance checks: a stand-in
  class of which nothing is an instance, the truth for a DataProto built here) and
  `reward_manager/remote.py` decorates its worker class with `ray.remote` at import (the
  decorated class becomes unusable; the test runs the `naive` manager).
- `vllm` (OpenRLHF): `SamplingParams` is built in `_dispatch_prompts_to_vllm` only. The
  policy itself is a scripted engine that returns fixed token ids: the generation is not
  under test, the reward request is.
- `openrlhf.trainer.ray.vllm_engine`: `batch_vllm_engine_call` wakes/sleeps engines in
  `generate_samples` only.

Three package `__init__` files are skipped (the package is registered with its real folder,
so its modules are the shipped files): `openrlhf.utils` and `openrlhf.datasets` only
re-export helpers (math grading needs pylatexenc; every dataset class), and
`verl.experimental.reward_loop` imports the Ray orchestration (`RewardLoopManager`,
`RewardLoopWorker`) whose per-sample call, `reward_manager.run_single`, is made here as
`RewardLoopWorker.compute_score_batch` makes it.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import contextlib
import datetime
import importlib.util
import io
import json
import os
import sys
import types
from pathlib import Path
from typing import Any


class StandInUsed(AttributeError):
    """The code under test used a stand-in module beyond the names it provides."""


class StandIn(types.ModuleType):
    """A module that only satisfies imports: its `provided` names, and nothing else."""

    def __init__(self, name: str, why: str, **provided: Any):
        super().__init__(name, f"test stand-in: {why}")
        self.__dict__.update(provided)

    def __getattr__(self, attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        raise StandInUsed(f"{self.__name__}.{attr}: the code under test used a stand-in")


def unusable(qualname: str):
    def fail(*args: Any, **kwargs: Any):
        raise StandInUsed(f"{qualname}: the code under test called a stand-in")

    fail.__qualname__ = qualname
    return fail


class ObjectRef:
    """Stand-in for `ray.ObjectRef`: nothing built here is a Ray object reference."""


def ray_stand_in() -> StandIn:
    def remote(*args: Any, **kwargs: Any):
        return lambda target: unusable(f"ray.remote({target.__name__})")

    return StandIn("ray", "Ray is not installed", ObjectRef=ObjectRef, remote=remote)


def package_without_init(name: str) -> None:
    """Register package `name` (its real folder) without running its `__init__.py`."""
    spec = importlib.util.find_spec(name)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    parent, _, leaf = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], leaf, module)


def tokenizer_of(path: str):
    """The policy's tokenizer: here the PRM's own character tokenizer, loaded as tdrm does
    (transformers' AutoTokenizer would swap in Qwen2's pre-tokenizer, which drops spaces)."""
    from tdrm_cli.prm import load_tokenizer

    return load_tokenizer(path)


# ---------------------------------------------------------------- OpenRLHF 0.11.2


def train_ppo_ray_parser() -> argparse.ArgumentParser:
    """The real `openrlhf.cli.train_ppo_ray` argparse: its `__main__` block up to `parse_args`."""
    path = Path(importlib.util.find_spec("openrlhf.cli.train_ppo_ray").origin)
    tree = ast.parse(path.read_text())
    main = next(n for n in tree.body if isinstance(n, ast.If) and "__main__" in ast.unparse(n.test))
    body = []
    for statement in main.body:
        if "parse_args" in ast.unparse(statement):
            break
        body.append(statement)
    namespace: dict[str, Any] = {"argparse": argparse, "datetime": datetime.datetime}
    exec(compile(ast.Module(body=body, type_ignores=[]), str(path), "exec"), namespace)
    return namespace["parser"]


class ScriptedEngine:
    """The policy: vLLM's `generate` answer (token ids, text, finish reason), scripted."""

    def __init__(self, token_ids: list[int], text: str):
        self.output = types.SimpleNamespace(
            token_ids=token_ids, text=text, finish_reason="stop", logprobs=None
        )

    async def generate(self, prompt_token_ids, sampling_params, multi_modal_data=None):
        return types.SimpleNamespace(outputs=[self.output])


def run_openrlhf(spec: dict[str, Any]) -> dict[str, Any]:
    sys.modules["ray"] = ray_stand_in()
    sys.modules["vllm"] = StandIn(
        "vllm", "vLLM is not installed", SamplingParams=unusable("vllm.SamplingParams")
    )
    package_without_init("openrlhf.utils")
    package_without_init("openrlhf.datasets")
    package_without_init("openrlhf.trainer.ray")
    sys.modules["openrlhf.trainer.ray.vllm_engine"] = StandIn(
        "openrlhf.trainer.ray.vllm_engine",
        "imports vLLM and Ray",
        batch_vllm_engine_call=unusable("batch_vllm_engine_call"),
    )
    from openrlhf.datasets.prompts_dataset import preprocess_data
    from openrlhf.trainer.ppo_utils.experience import Experience
    from openrlhf.trainer.ppo_utils.samples_generator import SamplesGenerator
    from openrlhf.utils.agent import SingleTurnAgentExecutor
    from openrlhf.utils.config import hierarchize

    parser = train_ppo_ray_parser()
    rejected = {}
    for flag in spec["old_flags"]:
        with contextlib.redirect_stderr(io.StringIO()) as err:
            try:
                parser.parse_args([flag, "x"])
                rejected[flag] = ""
            except SystemExit:
                rejected[flag] = err.getvalue().strip().splitlines()[-1]
    tokenizer = tokenizer_of(spec["tokenizer"])
    generator = SamplesGenerator.__new__(SamplesGenerator)  # as OpenRLHF's own tests do
    runs = []
    for run in spec["runs"]:
        args = hierarchize(parser.parse_args(run["flags"]))
        # train_ppo_ray.py, after parse_args: a comma-separated list of reward servers
        urls = args.reward.remote_url.split(",")
        executor = SingleTurnAgentExecutor(urls)
        sampling = types.SimpleNamespace(max_tokens=spec["max_new_tokens"], logprobs=None)
        labels, experiences, responses = [], [], []
        for row in spec["rows"]:
            prompt, label = preprocess_data(
                row, args.data.input_template, args.data.input_key, args.data.label_key
            )
            ids = tokenizer(row["completion"], add_special_tokens=False)["input_ids"]
            if row["eos"]:
                ids = [*ids, tokenizer.eos_token_id]
            engine = ScriptedEngine(ids, tokenizer.decode(ids))
            response = asyncio.run(
                executor.execute(prompt, label, sampling, spec["max_len"], tokenizer, engine)
            )
            if response["reward"] is None:  # execute() logs the failure (stdout) and goes on
                raise RuntimeError(f"OpenRLHF got no reward from {urls} for {prompt!r}")
            experience = generator._process_response_into_experience(
                response, max_len=spec["max_len"]
            )
            labels.append(label)
            responses.append({k: response[k] for k in ("prompt", "reward", "scores", "extra_logs")})
            experiences.append(experience)
        batch = Experience.concat_experiences(experiences, tokenizer.pad_token_id)
        runs.append(
            {
                "urls": urls,
                "labels": labels,
                "responses": responses,
                "dynamic_filter_scores": [e.scores[0].item() for e in experiences],
                "batch": {
                    "rewards": batch.rewards.tolist(),
                    "scores": batch.scores.tolist(),
                    "info": {k: v.tolist() for k, v in batch.info.items()},
                },
            }
        )
    return {"rejected": rejected, "runs": runs}


# ---------------------------------------------------------------- verl 0.9.1


def verl_config(overrides: list[str]):
    """verl's own `ppo_trainer` config, composed by Hydra with command-line overrides."""
    import verl
    from hydra import compose, initialize_config_dir

    config_dir = Path(verl.__file__).parent / "trainer" / "config"
    with initialize_config_dir(config_dir=str(config_dir), version_base=None):
        return compose("ppo_trainer", overrides=overrides)


def verl_batch(tokenizer, rows: list[dict[str, Any]]):
    """A DataProto as verl's agent loop hands it to the reward loop (left-padded prompts)."""
    import numpy as np
    import torch
    from verl import DataProto

    prompts = [tokenizer(r["prompt"], add_special_tokens=False)["input_ids"] for r in rows]
    responses = [
        tokenizer(r["completion"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        for r in rows
    ]
    width_p, width_r = max(map(len, prompts)), max(map(len, responses))
    pad = tokenizer.pad_token_id

    def padded(ids: list[int], width: int, left: bool) -> tuple[list[int], list[int]]:
        fill = [pad] * (width - len(ids))
        mask = [0] * len(fill)
        if left:
            return fill + ids, mask + [1] * len(ids)
        return ids + fill, [1] * len(ids) + mask

    p = [padded(ids, width_p, left=True) for ids in prompts]
    r = [padded(ids, width_r, left=False) for ids in responses]
    tensors = {
        "prompts": torch.tensor([ids for ids, _ in p]),
        "responses": torch.tensor([ids for ids, _ in r]),
        "attention_mask": torch.tensor([pm + rm for (_, pm), (_, rm) in zip(p, r, strict=True)]),
    }
    objects = {
        "data_source": np.array([r["data_source"] for r in rows], dtype=object),
        "reward_model": np.array([{"ground_truth": r["gold"]} for r in rows], dtype=object),
        "extra_info": np.array([dict(r["extra_info"]) for r in rows], dtype=object),
    }
    return DataProto.from_dict(tensors=tensors, non_tensors=objects)


def run_verl(spec: dict[str, Any]) -> dict[str, Any]:
    sys.modules["ray"] = ray_stand_in()
    import verl  # noqa: F401 - the real package __init__, on the stand-in above

    package_without_init("verl.experimental.reward_loop")
    from verl.experimental.reward_loop.reward_manager import get_reward_manager_cls, registry
    from verl.trainer.ppo.reward import get_custom_reward_fn, load_reward_manager

    tokenizer = tokenizer_of(spec["tokenizer"])
    try:
        get_reward_manager_cls("batch")
        batch_manager = ""
    except ValueError as e:
        batch_manager = str(e)
    legacy = verl_config(spec["legacy_overrides"])
    out: dict[str, Any] = {
        "registered": sorted(registry.REWARD_MANAGER),
        "batch_manager": batch_manager,
        "legacy_hook_loaded": get_custom_reward_fn(legacy) is not None,
        "runs": [],
    }
    config = verl_config(spec["overrides"])
    for url in spec["urls"]:
        os.environ["TDRM_SERVE_URL"] = url
        data = verl_batch(tokenizer, spec["rows"])

        async def main(data=data):
            # RewardLoopWorker builds its manager in its own event loop and scores a chunk
            # one sample at a time: gather(run_single(data[i : i + 1]) ...)
            manager = load_reward_manager(config, tokenizer)
            outputs = await asyncio.gather(
                *(manager.run_single(data[i : i + 1]) for i in range(len(data)))
            )
            return manager, outputs

        manager, outputs = asyncio.run(main())
        scores = [o["reward_score"] for o in outputs]
        rm_scores = type(manager).assemble_rm_scores(data, scores)
        last = data.batch["attention_mask"][:, data.batch["prompts"].size(1) :].sum(dim=1) - 1
        # RewardLoopManager.compute_rm_score: the first sample's keys, one array per key
        keys = list(outputs[0].get("reward_extra_info", {}))
        extra = {k: [o["reward_extra_info"][k] for o in outputs] for k in keys}
        out["runs"].append(
            {
                "manager": type(manager).__name__,
                "reward_scores": scores,
                "reward_extra_info": extra,
                "rm_scores_sum": rm_scores.sum(dim=1).tolist(),
                "rm_scores_at_last_token": rm_scores[range(len(data)), last].tolist(),
            }
        )
    return out


if __name__ == "__main__":
    which, spec_path, out_path = sys.argv[1:4]
    spec = json.loads(Path(spec_path).read_text())
    result = {"openrlhf": run_openrlhf, "verl": run_verl}[which](spec)
    Path(out_path).write_text(json.dumps(result))
