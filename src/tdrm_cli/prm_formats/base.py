"""What every public PRM format shares: the folder it loads from, its registry entry, and a
scorer with the interface tdrm's own `PRM` gives the stages (`score`, `separator`, `agg`,
`meta`, `max_tokens`, `encode(...).step_tokens`).

A format adapter says only how a (question, steps) pair becomes token sequences and which
positions of which sequence hold each step's value (`sequences`), and how a value is read
from the model's output at those positions (`read`). Batching, padding and the forward pass
are here, once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tdrm_cli.errors import UsageError
from tdrm_cli.steps import DEFAULT_SEPARATOR


@dataclass(frozen=True)
class Folder:
    """What detection may look at without loading weights."""

    path: Path
    config: dict[str, Any]
    weight_names: frozenset[str]
    """Tensor names in the folder's safetensors files (their headers only)."""
    special_tokens: frozenset[str] = frozenset()
    """Added and special tokens of the tokenizer (from tokenizer.json / tokenizer_config.json)."""
    files: frozenset[str] = frozenset()
    readme: str = ""
    """The start of the folder's model card (README.md), where a family names its recipe."""

    @property
    def architectures(self) -> list[str]:
        return list(self.config.get("architectures") or [])

    @property
    def causal_lm(self) -> bool:
        return any(a.endswith("ForCausalLM") for a in self.architectures)

    @property
    def labels(self) -> int:
        """Labels of a classification head (`num_labels`, else `id2label`'s size)."""
        count = self.config.get("num_labels")
        if isinstance(count, int) and not isinstance(count, bool):
            return count
        return len(self.config.get("id2label") or {0: 0, 1: 1})


@dataclass(frozen=True)
class Format:
    """One registry entry: `detect(folder)` says whether a folder is in this layout;
    `load(folder, options, dtype, device, trust_remote_code)` gives a scorer."""

    name: str
    help: str
    detect: Callable[[Folder], bool]
    load: Callable[..., Any]
    options: dict[str, str] = field(default_factory=dict)
    """`--prm-option KEY=VALUE` keys this format takes, with what each means."""


@dataclass
class Sequence_:
    """One forward pass's tokens and the positions read, one per step it scores."""

    ids: list[int]
    positions: list[int]


@dataclass
class Counted:
    """`encode(...)`'s answer for a public PRM: tokens per step (eval's cost table)."""

    step_tokens: list[int]


README_CHARS = 65536


def read_folder(path: str | Path, where: str = "--prm") -> Folder:
    """The folder's config, tensor names (safetensors headers), tokenizer specials and the
    start of its model card."""
    import json

    from safetensors import SafetensorError, safe_open

    from tdrm_cli.errors import first_line
    from tdrm_cli.steps import read_json_object

    path = Path(path)
    config = read_json_object(path / "config.json", where)
    names: set[str] = set()
    for file in sorted(path.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt") as f:
                names.update(f.keys())
        except (OSError, SafetensorError) as e:
            raise UsageError(
                f"{where} {path}: cannot read {file.name} ({type(e).__name__}: {first_line(e)})"
            ) from None
    special: set[str] = set()
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        file = path / name
        if not file.is_file():
            continue
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # the tokenizer's own loader reports it when the format loads
        for token in data.get("added_tokens") or []:  # tokenizer.json
            if isinstance(token, dict) and isinstance(token.get("content"), str):
                special.add(token["content"])
        for token in (data.get("added_tokens_decoder") or {}).values():  # tokenizer_config
            if isinstance(token, dict) and isinstance(token.get("content"), str):
                special.add(token["content"])
        for value in data.values():
            items = value if isinstance(value, list) else [value]
            for item in items:
                text = item.get("content") if isinstance(item, dict) else item
                if isinstance(text, str) and name != "tokenizer.json" and text.startswith("<"):
                    special.add(text)
    files = frozenset(p.name for p in path.iterdir())
    readme = ""
    if (path / "README.md").is_file():
        try:
            with open(path / "README.md", encoding="utf-8", errors="replace") as f:
                readme = f.read(README_CHARS)
        except OSError:
            readme = ""
    return Folder(path, config, frozenset(names), frozenset(special), files, readme)


def one_pass(prefixes: Sequence[Sequence_]) -> list[Sequence_]:
    """Per-step inputs (step k's: the whole input that scores steps 1..k alone, read at its
    positions) merged into as few forward passes as their tokens allow: a step whose tokens
    are a prefix of the next kept sequence's is read there, which causal attention makes
    the same value. A recipe that scores every prefix separately then costs one pass
    whenever its tokenization is prefix-stable, and stays exact when it is not."""
    groups: list[Sequence_] = []
    for seq in reversed(prefixes):
        head = groups[-1] if groups else None
        if head is not None and head.ids[: len(seq.ids)] == seq.ids:
            head.positions[:0] = seq.positions
        else:
            groups.append(Sequence_(list(seq.ids), list(seq.positions)))
    return groups[::-1]


def load_model(
    folder: Folder,
    auto_class: Any,
    dtype: Any,
    device: str,
    trust_remote_code: bool,
    where: str = "--prm",
    **kwargs: Any,
):
    """`auto_class.from_pretrained(folder)` in eval mode on `device`, safetensors when the
    folder has them (pickle weights only pass here after the caller's `--allow-pickle`
    check), load errors and non-finite weights as one line."""
    from tdrm_cli.generation import from_pretrained
    from tdrm_cli.prm import check_weights_finite

    safetensors = any(name.endswith(".safetensors") for name in folder.files)
    if dtype is not None:
        kwargs["dtype"] = dtype
    model, _ = from_pretrained(
        auto_class, str(folder.path), f"{where} {folder.path}",
        use_safetensors=True if safetensors else None,
        trust_remote_code=trust_remote_code, **kwargs,
    )  # fmt: skip
    check_weights_finite(model, f"{where} {folder.path}")
    return model.to(device).eval()


def load_tokenizer(folder: Folder, trust_remote_code: bool, where: str = "--prm"):
    """The folder's tokenizer (`generation.load_tokenizer`: a generic tokenizer.json stays
    generic whatever the model type)."""
    from tdrm_cli.generation import load_tokenizer as load_saved_tokenizer
    from tdrm_cli.generation import model_load_errors

    with model_load_errors(f"{where} {folder.path}"):
        return load_saved_tokenizer(str(folder.path), trust_remote_code)


def next_token_logits(model: Any, input_ids, attention_mask, rows, positions, token_ids):
    """`[n, len(token_ids)]`: a causal LM's logits of `token_ids` at `(rows, positions)`,
    with the LM head applied only there (a full `[batch, tokens, vocab]` logits tensor of
    a 128k vocabulary would not fit)."""
    hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask)
    picked = hidden.last_hidden_state[rows, positions]
    head = model.get_output_embeddings()
    weight = head.weight[token_ids]
    bias = getattr(head, "bias", None)
    logits = picked @ weight.T
    return logits if bias is None else logits + bias[token_ids]


def check_options(fmt: Format, options: dict[str, str], where: str) -> dict[str, str]:
    unknown = sorted(set(options) - set(fmt.options) - {"separator", "agg"})
    if unknown:
        known = ", ".join(sorted({*fmt.options, "separator", "agg"}))
        raise UsageError(
            f"{where}: format '{fmt.name}' has no option {unknown[0]!r} (it takes: {known})"
        )
    return options


class FormatPRM:
    """A public PRM behind tdrm's PRM interface. Subclasses set `format` and implement
    `sequences` and `read`.

    `separator` is how tdrm splits a policy's completion into steps before scoring it
    (`--prm-option separator=...`, default tdrm's); how the steps are then joined for the
    PRM is the format's own recipe. `head` is None: no prefix-cached search scoring and no
    online updates, which need tdrm's value head.
    """

    format = ""
    head = None

    def __init__(self, model: Any, tokenizer: Any, options: dict[str, str]):
        from tdrm_cli.voting import AGGREGATIONS

        self.model = model.eval()
        self.tokenizer = tokenizer
        self.options = dict(options)
        self.separator: str = options.get("separator", DEFAULT_SEPARATOR)
        self.agg: str = options.get("agg", "min")
        if self.agg not in AGGREGATIONS:
            raise UsageError(
                f"--prm-option agg={self.agg}: expected one of {', '.join(AGGREGATIONS)}"
            )
        self.max_tokens: int | None = getattr(model.config, "max_position_embeddings", None)
        self.meta: dict[str, Any] = {
            "format": self.format,
            "separator": self.separator,
            "agg": self.agg,
            "loss": None,
        }
        pad = tokenizer.pad_token_id
        self.pad_id: int = pad if pad is not None else (tokenizer.eos_token_id or 0)

    @property
    def device(self):
        return next(self.model.parameters()).device

    # ---------------------------------------------------------- what a format defines

    def sequences(self, question: str, steps: Sequence[str]) -> list[Sequence_]:
        """The token sequences scoring these steps needs and, in each, the positions whose
        values are the steps' (in step order over all sequences)."""
        raise NotImplementedError

    def read(self, output: Any, rows: Any, positions: Any):
        """Step values in (0, 1), a float tensor `[n]`, from the model's `output` at
        `(rows[i], positions[i])`."""
        raise NotImplementedError

    def values(self, input_ids: Any, attention_mask: Any, rows: Any, positions: Any):
        """The forward pass and `read`; a format overrides it to run less than the whole
        model output (e.g. `next_token_logits`)."""
        output = self.model(input_ids=input_ids, attention_mask=attention_mask)
        return self.read(output, rows, positions)

    # ---------------------------------------------------------- shared

    def encode(self, question: str, steps: Sequence[str]) -> Counted:
        """Tokens per step, each step tokenized alone (eval's cost table)."""
        return Counted(
            [len(self.tokenizer(s, add_special_tokens=False)["input_ids"]) for s in steps]
        )

    def surely_too_long(self, question: str, steps: Sequence[str]) -> bool:
        return False

    def score(
        self, problems: Sequence[str], solutions: Sequence[Sequence[str]], batch_size: int = 32
    ) -> list[list[float]]:
        """Step values of every solution."""
        import torch

        from tdrm_cli.prm import NonFinite, TooLong, length_buckets

        if len(problems) != len(solutions):
            raise ValueError(f"{len(problems)} problems but {len(solutions)} solutions")
        flat: list[tuple[int, Sequence_]] = []
        for i, (question, steps) in enumerate(zip(problems, solutions, strict=True)):
            for seq in self.sequences(question, steps) if steps else ():
                if self.max_tokens is not None and len(seq.ids) > self.max_tokens:
                    raise TooLong(
                        f"a solution of {len(seq.ids)} tokens is over the PRM's limit "
                        f"of {self.max_tokens} tokens"
                    )
                flat.append((i, seq))
        read_values: list[list[float]] = [[] for _ in flat]
        for chunk in length_buckets([len(s.ids) for _, s in flat], batch_size):
            seqs = [flat[j][1] for j in chunk]
            width = max(len(s.ids) for s in seqs)
            input_ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
            attention_mask = torch.zeros((len(seqs), width), dtype=torch.long)
            for r, s in enumerate(seqs):  # right padding: positions stay where they are alone
                input_ids[r, : len(s.ids)] = torch.tensor(s.ids)
                attention_mask[r, : len(s.ids)] = 1
            rows = torch.tensor([r for r, s in enumerate(seqs) for _ in s.positions])
            positions = torch.tensor([p for s in seqs for p in s.positions])
            with torch.inference_mode():
                read = self.values(
                    input_ids.to(self.device),
                    attention_mask.to(self.device),
                    rows.to(self.device),
                    positions.to(self.device),
                )
            read = read.float().cpu()
            if not bool(torch.isfinite(read).all()):
                raise NonFinite("the PRM gave a non-finite (NaN) step value")
            k = 0
            for j, s in zip(chunk, seqs, strict=True):
                read_values[j] = read[k : k + len(s.positions)].tolist()
                k += len(s.positions)
        values: list[list[float]] = [[] for _ in problems]
        for (i, _), got in zip(flat, read_values, strict=True):  # step order, whatever the buckets
            values[i].extend(got)
        return values
