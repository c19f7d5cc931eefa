"""The `tdrm` command line: parse, load config, call the stage, print the run folder.

Every command's options are generated from a config dataclass (the stages' in config.py;
`serve`'s, `pipeline`'s and `import-gguf`'s beside their code), so flags,
`--config FILE.yaml` keys and the saved `config.yaml` always agree. Heavy libraries are
imported inside the stages, which keeps `tdrm --help` instant (docs/design.md#commands).
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from tdrm_cli import __version__, config, pipeline
from tdrm_cli.errors import UsageError, first_line, one_line
from tdrm_cli.runs import rank
from tdrm_cli.serve_config import ServeConfig
from tdrm_cli.stages import STAGES, import_gguf

app = typer.Typer(
    name="tdrm",
    help="Temporal-difference-trained process reward models: collect, train, search, RL, eval.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

RUN_OPTIONS = "Run options"
"""The help panel of the options every stage has (`config.RunConfig`'s and `--config`)."""

verbose = False
"""`tdrm -v`: set by the root callback on every call, applied when a stage starts."""


def fail(message: str) -> None:
    typer.echo(f"error: {one_line(message)}", err=True)
    raise typer.Exit(2)


def os_error(e: OSError) -> str:
    """One line for an I/O failure (disk full, permission, a vanished file): what and where."""
    where = f"{e.filename}: " if e.filename else ""
    return f"{where}{e.strerror or first_line(e)}"


def _param_for(field: dataclasses.Field, annotation: Any) -> tuple[Any, Any]:
    """(annotation, typer.Option or typer.Argument) for one config field.

    An option's value None means 'not given': the dataclass (or YAML) value applies. The
    help ends with the default unless it already says what the default is.
    """
    meta = field.metadata
    default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
    help_text = meta.get("help", "")
    if meta.get("required"):
        help_text += "" if meta.get("argument") else " (required)"  # an argument shows it
    elif "(default" not in help_text:
        help_text += f" (default: {'none' if default is None else default})"
    base = annotation
    if getattr(annotation, "__args__", None) and type(None) in annotation.__args__:
        base = next(a for a in annotation.__args__ if a is not type(None))
    if meta.get("argument"):
        given = ... if meta.get("required") else None
        return base | None, typer.Argument(given, help=help_text, show_default=False)
    flag = "--" + field.name.replace("_", "-")
    panel = RUN_OPTIONS if field in dataclasses.fields(config.RunConfig) else None
    common = dict(rich_help_panel=panel, show_default=False, envvar=meta.get("envvar"))
    if annotation is bool:
        return bool | None, typer.Option(None, f"{flag}/--no-{flag[2:]}", help=help_text, **common)
    if typing_list(annotation):
        return list[str] | None, typer.Option(
            None, flag, help=help_text + " (repeatable)", **common
        )
    return base | None, typer.Option(None, flag, help=help_text, **common)


def typing_list(annotation: Any) -> bool:
    return getattr(annotation, "__origin__", None) is list


def config_command(
    name: str, cfg_cls: type, help_text: str, config_file: bool = True
) -> Callable[[Callable[[Any], None]], Callable[[Any], None]]:
    """Register `body(cfg)` as the command `name`, with an option (or argument) per field
    of `cfg_cls` and, with `config_file`, `--config FILE.yaml`. A UsageError or OSError
    while building the config or in `body` is a one-line error, exit 2."""
    hints = config.resolved_types(cfg_cls)
    fields = dataclasses.fields(cfg_cls)

    def register(body: Callable[[Any], None]) -> Callable[[Any], None]:
        def command(**kwargs: Any) -> None:
            path = kwargs.pop("config", None)
            try:
                refuse_empty_env(fields, kwargs)
                values = config.load_yaml(path) if path else {}
                cfg = config.build_config(cfg_cls, values, kwargs, source=str(path))
                for field in fields:
                    if field.metadata.get("required") and getattr(cfg, field.name) in (None, ""):
                        raise UsageError(f"--{field.name.replace('_', '-')} is required")
                body(cfg)
            except UsageError as e:
                fail(str(e))
            except OSError as e:  # a stage's run folder is already marked failed
                fail(os_error(e))

        params = [config_param()] if config_file else []
        for field in fields:
            annotation, default = _param_for(field, hints[field.name])
            params.append(
                inspect.Parameter(
                    field.name,
                    inspect.Parameter.KEYWORD_ONLY,
                    default=default,
                    annotation=annotation,
                )
            )
        command.__signature__ = inspect.Signature(params)
        command.__name__ = name.replace("-", "_")
        app.command(name, help=help_text)(command)
        return body

    return register


def config_param() -> inspect.Parameter:
    return inspect.Parameter(
        "config",
        inspect.Parameter.KEYWORD_ONLY,
        default=typer.Option(
            None,
            "--config",
            help="YAML file of config keys; flags override it.",
            rich_help_panel=RUN_OPTIONS,
        ),
        annotation=Path | None,
    )


def refuse_empty_env(fields: tuple[dataclasses.Field, ...], flags: dict[str, Any]) -> None:
    """click reads an empty environment variable as unset: for `--api-key` that would serve
    without the auth it asks for, so a variable set empty is an error instead."""
    for field in fields:
        env = field.metadata.get("envvar")
        if env and flags.get(field.name) is None and os.environ.get(env) is not None:
            what = field.name.replace("_", " ")
            raise UsageError(f"{env} is set but empty: unset it, or set it to the {what}")


def printing_path(run: Callable[[Any], Path]) -> Callable[[Any], None]:
    """A command body: `run(cfg)` with its stdout sent to stderr, then the folder it wrote
    as the only line on stdout (from rank 0 under torchrun)."""

    def body(cfg: Any) -> None:
        from tdrm_cli.console import set_verbose  # rich: not needed by `tdrm --help`

        set_verbose(verbose)
        with contextlib.redirect_stdout(sys.stderr):
            path = run(cfg)
        if rank() == 0:
            typer.echo(str(path))

    return body


def serve_prm(cfg: ServeConfig) -> None:
    from tdrm_cli import serve

    serve.run(cfg)


for _name, _stage in STAGES.items():
    config_command(_name, _stage.config, _stage.help)(printing_path(_stage.run))
config_command(
    "serve",
    ServeConfig,
    "Serve a PRM over HTTP: OpenRLHF /get_reward, /score, /step_rewards, /health, /info.",
)(serve_prm)
config_command(
    "pipeline",
    pipeline.PipelineConfig,
    "Run a recipe's stages in order; complete stages are skipped, failed ones resumed.",
    config_file=False,
)(printing_path(pipeline.run))


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


config_command(
    "import-gguf",
    import_gguf.ImportGGUFConfig,
    "Convert a GGUF checkpoint into a plain safetensors HF model folder.",
    config_file=False,
)(printing_path(import_gguf.run))


def _version(value: bool) -> None:
    if value:
        typer.echo(f"tdrm {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
    verbose_flag: bool = typer.Option(
        False,
        "-v",
        "--verbose",
        envvar="TDRM_VERBOSE",
        help="Also show the libraries' own output: transformers load reports and progress "
        "bars, accelerate / datasets / TRL logging, Python warnings.",
    ),
) -> None:
    """Temporal-difference-trained process reward models, end to end."""
    global verbose
    verbose = verbose_flag


def main() -> None:
    try:
        app()
    except UsageError as e:  # raised outside a stage body (e.g. while parsing)
        typer.echo(f"error: {one_line(str(e))}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
