"""Run folders: the contract between stages (docs/design.md#run-folders).

    runs/<name>/manifest.json   stage, status running|complete|failed, inputs, seed, versions, metrics
    runs/<name>/config.yaml     the fully resolved config
    runs/<name>/.lock           while a process writes the folder: its pid and host

Every file is written atomically (temp file in the same folder + rename). A run is
`complete` only after its stage has put every artifact in place; stages refuse
inputs that are not complete. One process at a time writes a run folder: the lock
(`locks.FolderLock`) is an advisory `flock` on `.lock`, which the kernel drops when its
holder dies, so the lock of a killed run is stale by construction and the next `--resume`
takes it over.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import socket
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from tdrm_cli.config import dump_yaml, shown
from tdrm_cli.errors import JSON_ERRORS, UsageError, error_line
from tdrm_cli.generation import save_tokenizer
from tdrm_cli.locks import LOCK, FolderLock

MANIFEST = "manifest.json"
CONFIG = "config.yaml"


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # mkstemp creates 0600; run folders are meant to be shared
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_model(model: Any, tokenizer: Any, folder: Path) -> Path:
    """`save_pretrained` of a model (safetensors only) and its tokenizer, every file 0644
    like the rest of a run folder (transformers writes the weights 0600)."""
    model.save_pretrained(str(folder), safe_serialization=True)
    save_tokenizer(tokenizer, str(folder))
    for path in Path(folder).iterdir():
        if path.is_file() and not path.is_symlink():
            path.chmod(0o644)
    return Path(folder)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def versions() -> dict[str, str | None]:
    out = {}
    for dist in ("tdrm-cli", "torch", "transformers", "trl"):
        try:
            out[dist.replace("-cli", "")] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist.replace("-cli", "")] = None
    return out


def read_manifest(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, *JSON_ERRORS) as e:
        raise UsageError(f"{path}: unreadable run manifest ({type(e).__name__})") from None
    if not isinstance(data, dict) or "stage" not in data or "status" not in data:
        raise UsageError(f"{path}: not a tdrm run manifest (missing 'stage' or 'status')")
    return data


def manifest_sha256(run_dir: Path) -> str:
    return hashlib.sha256((Path(run_dir) / MANIFEST).read_bytes()).hexdigest()


def file_sha256(path: Path) -> str:
    """The sha256 of a (possibly large) input file, read 1 MiB at a time."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_run_dir(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def require_complete(
    path: str | Path, role: str, stage: str | tuple[str, ...] | None = None
) -> dict:
    """The manifest of a complete input run, or a one-line UsageError."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"--{role} {path}: no such file or folder")
    if not is_run_dir(path):
        raise UsageError(f"--{role} {path}: not a tdrm run folder (no {MANIFEST})")
    manifest = read_manifest(path)
    stages = (stage,) if isinstance(stage, str) else stage
    if stages and manifest["stage"] not in stages:
        raise UsageError(
            f"--{role} {path}: is a '{manifest['stage']}' run, expected {' or '.join(stages)}"
        )
    if manifest["status"] != "complete":
        raise UsageError(
            f"--{role} {path}: run is '{manifest['status']}', not complete "
            f"(finish it with --resume first)"
        )
    return manifest


def default_out(stage: str) -> Path:
    return Path("runs") / f"{stage}-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"


@dataclass
class Run:
    """A run folder being written by one stage (holding the folder's lock until it ends)."""

    path: Path
    manifest: dict[str, Any]
    lock: FolderLock | None = None

    @property
    def resumed(self) -> bool:
        return bool(self.manifest.get("resumed"))

    def save_manifest(self) -> None:
        atomic_write_json(self.path / MANIFEST, self.manifest)

    def add_input(self, role: str, path: str | Path) -> None:
        """Record an input: its absolute resolved path (a hub id as given) and, for a run
        folder, its manifest hash."""
        path = Path(path)
        sha = manifest_sha256(path) if is_run_dir(path) else None
        where = str(path.resolve()) if path.exists() else str(path)
        self.manifest["inputs"][role] = {"path": where, "sha256": sha}
        self.save_manifest()

    def set_metrics(self, metrics: dict[str, Any]) -> None:
        self.manifest["metrics"] = metrics
        self.save_manifest()

    def complete(self, metrics: dict[str, Any] | None = None) -> None:
        if metrics is not None:
            self.manifest["metrics"] = metrics
        self.manifest.update(status="complete", finished=now(), error=None)
        self.save_manifest()

    def fail(self, error: BaseException) -> None:
        self.manifest.update(status="failed", finished=now(), error=error_line(error))
        self.save_manifest()

    def release(self) -> None:
        """Let other processes write the folder (`run_stage` does this when the stage ends)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None


# Config fields that name what a stage reads: never the folder it writes.
INPUT_FIELDS = (
    "file",
    "policy",
    "data",
    "base",
    "init",
    "prm",
    "samples",
    "bon",
    "search",
    "rl",
    "steps_file",
)


def input_args(cfg: Any) -> dict[str, list[str]]:
    """The inputs a config names, field -> paths: local ones absolute and resolved
    (symlinks followed), anything else (a hub id) as given."""
    out: dict[str, list[str]] = {}
    for name in INPUT_FIELDS:
        value = getattr(cfg, name, None)
        values = value if isinstance(value, list) else [] if value is None else [value]
        if values:
            out[name] = [str(Path(v).resolve()) if Path(v).exists() else str(v) for v in values]
    return out


def check_out_apart(out: Path, cfg: Any) -> None:
    """Refuse an `--out` that is, lies inside, or contains one of the stage's inputs."""
    target = out.resolve()
    for name, paths in input_args(cfg).items():
        for given, path in zip(_as_list(getattr(cfg, name)), paths, strict=True):
            if not Path(given).exists():
                continue
            inp = Path(path)
            if target == inp:
                how = "is"
            elif target.is_relative_to(inp):
                how = "lies inside"
            elif inp.is_relative_to(target):
                how = "contains"
            else:
                continue
            flag = "--" + name.replace("_", "-")
            raise UsageError(
                f"--out {out}: {how} the input {flag} {given}; write the run to another folder"
            )


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [] if value is None else [value]


def check_inputs_unchanged(out: Path, manifest: dict[str, Any], cfg: Any = None) -> None:
    """Refuse to resume a run whose inputs are no longer the ones it started from: other
    inputs named, an input run gone, or an input run's manifest changed."""
    if cfg is not None and "input_args" in manifest and manifest["input_args"] != input_args(cfg):
        before = "; ".join(f"{k}={','.join(v)}" for k, v in manifest["input_args"].items())
        raise UsageError(
            f"--out {out}: {MANIFEST}: the run started from other inputs ({before}); "
            f"resume with the same inputs or start over with --overwrite"
        )
    for role, entry in (manifest.get("inputs") or {}).items():
        if not isinstance(entry, dict) or not entry.get("sha256"):
            continue
        path = Path(str(entry.get("path")))
        if not is_run_dir(path):
            raise UsageError(
                f"--out {out}: {MANIFEST}: input '{role}' ({path}) is gone; "
                f"cannot check that the run resumes from the same input"
            )
        if manifest_sha256(path) != entry["sha256"]:
            raise UsageError(
                f"--out {out}: {MANIFEST}: input '{role}' ({path}) is not the run this one started "
                f"from (manifest sha256 differs); start over with --overwrite"
            )


def make_folder(path: Path, flag: str) -> None:
    """`mkdir -p`, or a one-line UsageError saying why not (a file in the way, a dangling
    link, no permission, a read-only file system, a name too long)."""
    try:
        if path.is_symlink() and not path.exists():
            raise UsageError(f"{flag} {shown(str(path), 300)}: a dangling symbolic link")
        if path.exists() and not path.is_dir():
            raise UsageError(f"{flag} {shown(str(path), 300)}: exists and is not a folder")
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(
            f"{flag} {shown(str(path), 300)}: cannot create the folder ({e.strerror or e})"
        ) from None


def prepare_run(stage: str, cfg: Any) -> Run:
    """Create (or reopen with --resume) the run folder for `cfg.out`, locked; refuse to clobber."""
    out = Path(cfg.out) if cfg.out else default_out(stage)
    cfg.out = str(out)
    try:
        if cfg.resume and not is_run_dir(out):
            raise UsageError(f"--out {out}: no run to resume")
        check_out_apart(out, cfg)
    except OSError as e:  # e.g. a name too long to look up
        raise UsageError(
            f"--out {shown(str(out), 300)}: unusable path ({e.strerror or e})"
        ) from None
    make_folder(out, "--out")
    lock = FolderLock.acquire(out)
    try:
        manifest = _open_manifest(stage, cfg, out)
    except BaseException:
        lock.release()
        raise
    run = Run(out, manifest, lock)
    run.save_manifest()
    atomic_write_text(out / CONFIG, dump_yaml(cfg))
    return run


def _open_manifest(stage: str, cfg: Any, out: Path) -> dict[str, Any]:
    """The manifest to start (or resume) with; the caller holds the folder's lock."""
    if is_run_dir(out):
        old = read_manifest(out)
        if old["stage"] != stage:
            raise UsageError(
                f"--out {out}: holds a '{old['stage']}' run, not a '{stage}' one; "
                f"choose another folder (--overwrite replaces only a run of the same stage)"
            )
        if cfg.overwrite:
            _clear(out)
        elif cfg.resume:
            if old["status"] == "complete":
                raise UsageError(f"--out {out}: run is already complete (nothing to resume)")
            check_inputs_unchanged(out, old, cfg)
            old.update(status="running", resumed=True, argv=sys.argv, error=None)
            return old
        elif old["status"] == "complete":
            raise UsageError(
                f"--out {out}: already holds a complete run (pass --overwrite to replace it)"
            )
        else:
            raise UsageError(
                f"--out {out}: holds a '{old['status']}' run (pass --resume to continue it "
                f"or --overwrite to start over)"
            )
    elif any(child.name != LOCK for child in out.iterdir()):
        raise UsageError(f"--out {out}: folder is not empty and holds no tdrm run")
    return {
        "stage": stage,
        "status": "running",
        "created": now(),
        "finished": None,
        "inputs": {},
        "input_args": input_args(cfg),
        "seed": getattr(cfg, "seed", None),
        "versions": versions(),
        "argv": sys.argv,
        "metrics": {},
        "error": None,
    }


def _clear(path: Path) -> None:
    import shutil

    for child in path.iterdir():
        if child.name == LOCK:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


@contextmanager
def run_stage(stage: str, cfg: Any) -> Iterator[Run]:
    """Open the run folder; mark it failed (with the error) if the stage raises."""
    run = prepare_run(stage, cfg)
    try:
        yield run
        if run.manifest["status"] != "complete":
            run.complete()
    except BaseException as e:
        run.fail(e)
        raise
    finally:
        run.release()


def list_runs(root: Path) -> list[tuple[Path, dict[str, Any]]]:
    """Every run folder at most two levels under `root`, oldest first."""
    found = []
    for manifest in sorted(list(root.glob(f"*/{MANIFEST}")) + list(root.glob(f"*/*/{MANIFEST}"))):
        try:
            found.append((manifest.parent, read_manifest(manifest.parent)))
        except UsageError:
            continue
    return sorted(found, key=lambda item: str(item[1].get("created", "")))


def writer_alive(folder: str | Path) -> bool | None:
    """Whether the process named in `folder/.lock` still runs: None when it is on another host.

    Read-only (it never takes the lock), for listings: a `running` run whose writer is gone
    was interrupted and waits for `--resume`.
    """
    try:
        words = (Path(folder) / LOCK).read_text(encoding="utf-8").split()
    except (OSError, UnicodeDecodeError):
        return False
    if len(words) != 4 or words[0] != "pid" or not words[1].isdigit():
        return False
    if words[3] != socket.gethostname():
        return None
    try:
        os.kill(int(words[1]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


MODEL_STAGES = ("sft", "rl", "train-prm")


def resolve_model(
    path: str | Path, role: str, stages: tuple[str, ...] = MODEL_STAGES
) -> tuple[str, dict | None]:
    """A model reference -> (loadable path or hub id, the run manifest when it was a run folder).

    Accepts a complete run folder of one of `stages` (its `model/`), a local HF model
    folder (has config.json), or a hub id (`owner/name`, needs network).
    """
    p = Path(path)
    if is_run_dir(p):
        manifest = require_complete(p, role, stages)
        model_dir = p / "model"
        if not (model_dir / "config.json").is_file():
            raise UsageError(f"--{role} {p}: run has no model/ folder")
        return str(model_dir), manifest
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise UsageError(
                f"--{role} {p}: not a model folder (no config.json) and not a tdrm run"
            )
        return str(p), None
    if p.exists():
        raise UsageError(f"--{role} {p}: is a file, expected a model folder or a run folder")
    if str(path).count("/") == 1 and not str(path).startswith((".", "/")):
        return str(path), None  # hub id
    raise UsageError(f"--{role} {p}: no such model folder or run folder")


# ---------------------------------------------------------------- multi-process runs


def rank() -> int:
    """This process's rank under torchrun / accelerate (0 when single-process)."""
    return int(os.environ.get("RANK", 0))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", 1))


class FollowerRun(Run):
    """The run object of ranks > 0: same fields, never writes (rank 0 owns the folder)."""

    def save_manifest(self) -> None:
        pass


@contextmanager
def open_run(stage: str, cfg: Any) -> Iterator[Run]:
    """`run_stage` on rank 0; other ranks train with a run object that never writes."""
    if rank() == 0:
        with run_stage(stage, cfg) as run:
            yield run
    else:
        yield FollowerRun(Path(cfg.out), {"inputs": {}, "metrics": {}})
