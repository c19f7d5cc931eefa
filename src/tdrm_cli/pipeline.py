"""`tdrm pipeline RECIPE.yaml`: run a chain of stages, resumably.

A recipe names its stages and their options; `@name` in an option refers to the run
folder of an earlier stage. Every stage writes `<root>/<name>`. Stages whose folder is
already complete are skipped, a `running`/`failed` one is resumed, the rest run fresh:
running the same recipe twice costs nothing the second time.

    # tdrm pipeline recipes/demo.yaml
    root: runs/demo
    seed: 0
    stages:
      - {name: sft, stage: sft, args: {task: arith}}
      - {name: collect, stage: collect, args: {policy: "@sft", n: 8}}
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tdrm_cli import config
from tdrm_cli.errors import UsageError
from tdrm_cli.locks import FolderLock
from tdrm_cli.runs import atomic_write_json, is_run_dir, make_folder, read_manifest
from tdrm_cli.stages import STAGES

RECIPE_KEYS = {"root", "seed", "stages", "description"}
STEP_KEYS = {"name", "stage", "args"}


@dataclass
class PipelineConfig:
    """`tdrm pipeline RECIPE`: the recipe to run, and what to override in it."""

    recipe: Path | None = config.opt(
        None, "Recipe YAML: stages, their options, @name references.", argument=True, required=True
    )
    root: Path | None = config.opt(
        None, "Folder for the stage run folders (default: the recipe's root)."
    )
    seed: int | None = config.opt(None, "Seed for every stage (default: the recipe's seed).")
    only: list[str] = config.opt([], "Run only these stage names.")


def run(cfg: PipelineConfig) -> Path:
    """Load and check the whole recipe, then run its stages; returns the recipe's root."""
    recipe = load_recipe(cfg.recipe, root=cfg.root, seed=cfg.seed)
    return run_pipeline(recipe, only=cfg.only or None)


@dataclass
class Step:
    name: str
    stage: str
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class Recipe:
    path: Path
    root: Path
    seed: int
    steps: list[Step]


def load_recipe(
    path: str | Path, root: str | Path | None = None, seed: int | None = None
) -> Recipe:
    """Parse and validate a recipe: known keys, known stages, unique names, valid @refs and configs."""
    path = Path(path)
    data = config.load_yaml(path)
    unknown = set(data) - RECIPE_KEYS
    if unknown:
        raise UsageError(
            f"{path}: unknown key '{sorted(unknown)[0]}' (known: {', '.join(sorted(RECIPE_KEYS))})"
        )
    raw_steps = data.get("stages")
    if not isinstance(raw_steps, list) or not raw_steps:
        raise UsageError(f"{path}: 'stages' must be a non-empty list")
    steps: list[Step] = []
    for i, raw in enumerate(raw_steps):
        where = f"{path}: stages[{i}]"
        if (
            not isinstance(raw, dict)
            or set(raw) - STEP_KEYS
            or "name" not in raw
            or "stage" not in raw
        ):
            raise UsageError(f"{where}: expected a mapping with name, stage and optional args")
        name, args = raw["name"], raw.get("args") or {}
        if (
            isinstance(name, bool)
            or not isinstance(name, str | int)
            or str(name) in ("", ".", "..")
            or any(c in str(name) for c in "/\\")
        ):
            raise UsageError(
                f"{where}: 'name' must be a plain folder name (written to <root>/<name>), got {name!r}"
            )
        if not isinstance(args, dict):
            raise UsageError(
                f"{where}: 'args' must be a mapping of stage options, got {type(args).__name__}"
            )
        step = Step(str(name), str(raw["stage"]), dict(args))
        if step.stage not in STAGES:
            raise UsageError(f"{where}: unknown stage '{step.stage}' (known: {', '.join(STAGES)})")
        if step.name in {s.name for s in steps}:
            raise UsageError(f"{where}: duplicate name '{step.name}'")
        for key in ("out", "resume", "overwrite"):
            if key in step.args:
                raise UsageError(f"{where}: '{key}' is set by the pipeline, remove it from args")
        for ref in _refs(step.args):
            if ref not in {s.name for s in steps}:
                raise UsageError(f"{where}: '@{ref}' does not name an earlier stage")
        steps.append(step)
    recipe_root = root or data.get("root") or f"runs/{path.stem}"
    if not isinstance(recipe_root, str | Path):
        raise UsageError(f"{path}: 'root' must be a folder path, got {type(recipe_root).__name__}")
    recipe_seed = seed if seed is not None else data.get("seed", 0)
    if isinstance(recipe_seed, bool) or not isinstance(recipe_seed, int):
        raise UsageError(f"{path}: 'seed' must be an integer, got {recipe_seed!r}")
    recipe = Recipe(path, Path(recipe_root), recipe_seed, steps)
    for step in steps:  # every stage config must build before anything runs
        build_step_config(recipe, step)
    return recipe


def _refs(args: dict[str, Any]) -> list[str]:
    values = [v for value in args.values() for v in (value if isinstance(value, list) else [value])]
    return [v[1:] for v in values if isinstance(v, str) and v.startswith("@")]


def _resolve(value: Any, root: Path) -> Any:
    if isinstance(value, list):
        return [_resolve(v, root) for v in value]
    if isinstance(value, str) and value.startswith("@"):
        return str(root / value[1:])
    return value


def build_step_config(recipe: Recipe, step: Step, resume: bool = False) -> Any:
    cls = STAGES[step.stage].config
    args = {key: _resolve(value, recipe.root) for key, value in step.args.items()}
    args.setdefault("seed", recipe.seed)
    args.update(out=str(recipe.root / step.name), resume=resume, overwrite=False)
    return config.build_config(cls, args, {}, source=f"{recipe.path} stage '{step.name}'")


def check_same_settings(recipe: Recipe, step: Step) -> None:
    """Refuse to skip a complete stage whose saved config differs from the recipe's."""
    saved = config.load_yaml(recipe.root / step.name / "config.yaml")
    wanted = config.to_dict(build_step_config(recipe, step))
    # A key the saved config lacks is an option added since that run: it ran without it.
    changed = [
        k
        for k in wanted
        if k not in ("out", "resume", "overwrite") and k in saved and saved[k] != wanted[k]
    ]
    if changed:
        key = changed[0]
        raise UsageError(
            f"{recipe.root / step.name}: complete, but run with {key}={saved.get(key)!r} where the recipe "
            f"now says {wanted[key]!r}; remove that folder (and the stages after it) or use another --root"
        )


def step_status(recipe: Recipe, step: Step) -> str:
    out = recipe.root / step.name
    return read_manifest(out)["status"] if is_run_dir(out) else "new"


def run_pipeline(recipe: Recipe, only: list[str] | None = None) -> Path:
    """Run every step in order; returns the recipe's root folder."""
    names = [step.name for step in recipe.steps]
    unknown = [name for name in only or () if name not in names]
    if unknown:
        raise UsageError(
            f"--only {unknown[0]}: no such stage in {recipe.path} (stages: {', '.join(names)})"
        )
    make_folder(recipe.root, "--root")
    lock = FolderLock.acquire(recipe.root, "--root")  # one pipeline per root; stages lock their own
    try:
        return _run_steps(recipe, only)
    finally:
        lock.release()


def _run_steps(recipe: Recipe, only: list[str] | None) -> Path:
    from tdrm_cli.console import console  # rich: not needed by `tdrm --help`

    timings: dict[str, float] = {}
    for step in recipe.steps:
        if only and step.name not in only:
            continue
        status = step_status(recipe, step)
        if status == "complete":
            check_same_settings(recipe, step)
            console.print(f"[green]✓[/] {step.name}: complete, skipped")
            continue
        cfg = build_step_config(recipe, step, resume=status in ("running", "failed"))
        console.rule(f"{step.name} ({step.stage}{', resuming' if cfg.resume else ''})")
        start = time.perf_counter()
        STAGES[step.stage].run(cfg)
        timings[step.name] = round(time.perf_counter() - start, 1)
    summary = summarize(recipe, timings)
    atomic_write_json(recipe.root / "pipeline.json", summary)
    return recipe.root


def summarize(recipe: Recipe, timings: dict[str, float]) -> dict[str, Any]:
    from rich.table import Table

    from tdrm_cli.console import console, fitted
    from tdrm_cli.report import key_metric

    table = Table(
        title=f"pipeline {recipe.path} (seed {recipe.seed}), runs in {recipe.root}",
        caption="seconds: spent in this call",
    )
    for column in ("run", "stage", "status", "seconds", "key metric"):
        table.add_column(column)
    rows = []
    for step in recipe.steps:
        out = recipe.root / step.name
        manifest = read_manifest(out) if is_run_dir(out) else {}
        status = manifest.get("status", "new")
        seconds = timings.get(step.name)
        metric = key_metric(manifest.get("metrics") or {})
        table.add_row(
            step.name,
            step.stage,
            status,
            "skipped" if seconds is None else f"{seconds:.1f}",
            metric,
        )
        rows.append(
            {
                "name": step.name,
                "stage": step.stage,
                "status": status,
                "seconds": seconds,
                "metric": metric,
            }
        )
    console.print(fitted(table))
    return {"recipe": str(recipe.path), "seed": recipe.seed, "stages": rows}
