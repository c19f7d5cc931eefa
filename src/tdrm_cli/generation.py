"""Generation backends behind one small interface.

A backend has a `tokenizer` and `generate(prompts, sampling, on_batch)`, which returns,
for every prompt, `sampling.n` completions (text without the stop token, token count,
whether the model stopped by itself). Backends are picked by name from `BACKENDS`:

- `hf` (default): batched `model.generate` with left padding on the CPU or one GPU;
  every sampled batch is seeded from (`sampling.seed`, batch start), so a fixed seed and
  batch composition give the same text every time. `HFBackend.wrap` puts it on a model
  already in memory (`tdrm sft` and `tdrm rl` evaluate their policy in training so).
- `vllm` (optional extra `tdrm-cli[vllm]`, GPU only): vLLM's offline `LLM` engine with
  one seeded `SamplingParams` per sequence; vllm is imported only when it is chosen.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from tdrm_cli.errors import UsageError, first_line

OnBatch = Callable[[int, int], None]
"""Progress callback: `on_batch(sequences_done, tokens_generated)` after every batch."""


@dataclass
class Completion:
    text: str
    num_tokens: int
    """Generated tokens, the stop token included."""
    finished: bool
    """True when the model stopped by itself (EOS), False when cut at max tokens."""


@dataclass
class Sampling:
    n: int = 1
    temperature: float = 1.0
    """0 means greedy."""
    top_p: float = 1.0
    max_new_tokens: int = 128
    seed: int = 0


class Backend(Protocol):
    tokenizer: Any

    def generate(
        self, prompts: list[str], sampling: Sampling, on_batch: OnBatch | None = None
    ) -> list[list[Completion]]: ...


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def weights_kwargs(model_path: str, allow_pickle: bool = False) -> dict[str, Any]:
    """`from_pretrained` kwargs that load safetensors only, unless `allow_pickle`.

    Pickle weights (`pytorch_model.bin`, ...) can run arbitrary code when unpickled. A local
    folder holding only those is refused with a one-line error naming the file; a hub id is
    held to safetensors by transformers itself (`use_safetensors=True`).
    """
    from pathlib import Path

    if allow_pickle:
        return {"use_safetensors": None}  # safetensors when present, else the pickle files
    folder = Path(model_path)
    if folder.is_dir() and not any(folder.glob("*.safetensors")):
        pickles = sorted(f.name for f in folder.iterdir() if f.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise UsageError(
                f"{folder / pickles[0]}: pickle weights can run code when loaded; tdrm loads "
                f"safetensors only (pass --allow-pickle if you trust this file)"
            )
    return {"use_safetensors": True}


@contextlib.contextmanager
def model_load_errors(where: str) -> Iterator[None]:
    """Turn what loading a broken model folder raises (unreadable or truncated files,
    safetensors headers, configs transformers cannot resolve) into one UsageError line."""
    from safetensors import SafetensorError

    try:
        yield
    except UsageError:
        raise
    except (OSError, ValueError, KeyError, SafetensorError) as e:
        raise UsageError(
            f"{where}: cannot load the model ({type(e).__name__}: {first_line(e)})"
        ) from None


def from_pretrained(
    auto_class: Any, model_path: str, where: str, new_ok: tuple[str, ...] = (), **kwargs: Any
) -> tuple[Any, list[str]]:
    """`auto_class.from_pretrained(model_path, **kwargs)`, load errors as one line
    (`model_load_errors`). Weights the checkpoint lacks are initialised at random: a warning
    names them, except those under a top module in `new_ok` (a head added on purpose);
    returns (model, those new weights)."""
    with model_load_errors(where):
        model, info = auto_class.from_pretrained(model_path, output_loading_info=True, **kwargs)
    missing = sorted(info.get("missing_keys") or ())
    wanted = [name for name in missing if name.split(".", 1)[0] in new_ok]
    others = [name for name in missing if name not in wanted]
    if others:
        from tdrm_cli.console import warn

        more = f" and {len(others) - 3} more" if len(others) > 3 else ""
        warn(
            f"{where}: weights not in the checkpoint start at random "
            f"({len(others)}: {', '.join(others[:3])}{more})"
        )
    return model, wanted


def sampling_kwargs(temperature: float, top_p: float) -> dict[str, Any]:
    """`model.generate` sampling arguments: greedy at temperature <= 0, else nucleus
    sampling with top-k off."""
    if temperature <= 0:
        return dict(do_sample=False)
    return dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)


def _group(flat: list[Completion], n: int) -> list[list[Completion]]:
    return [flat[i : i + n] for i in range(0, len(flat), n)]


GENERIC_TOKENIZERS = ("TokenizersBackend", "PreTrainedTokenizerFast")


def load_tokenizer(model_path: str, trust_remote_code: bool = False):
    """The tokenizer a model folder was saved with.

    transformers 5 `AutoTokenizer` picks the class from the model type (a Qwen2 model gets
    `Qwen2Tokenizer`, which swaps in its own byte-level pre-tokenizer) even when the folder
    saved a generic `tokenizer.json`; for the character tokenizer of folders saved before
    it was spelled byte-level, that silently drops every newline and space. A folder that
    says its tokenizer is generic is loaded as such.
    """
    import json
    from pathlib import Path

    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    config = Path(model_path) / "tokenizer_config.json"
    if (
        config.is_file()
        and json.loads(config.read_text(encoding="utf-8")).get("tokenizer_class")
        in GENERIC_TOKENIZERS
    ):
        return PreTrainedTokenizerFast.from_pretrained(model_path)
    return AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)


def save_tokenizer(tokenizer: Any, folder: str) -> None:
    """`save_pretrained`, a generic tokenizer recorded as `PreTrainedTokenizerFast`: the
    name transformers 4 resolves too (it has no `TokenizersBackend`, the class name
    transformers 5 writes), so plain `AutoTokenizer.from_pretrained` opens the folder."""
    import json
    from pathlib import Path

    tokenizer.save_pretrained(folder)
    path = Path(folder) / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    if config.get("tokenizer_class") in GENERIC_TOKENIZERS:
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


class HFBackend:
    """Batched `transformers` generation on the CPU or one GPU."""

    def __init__(
        self,
        model_path: str,
        batch_size: int = 64,
        dtype: str = "auto",
        trust_remote_code: bool = False,
        allow_pickle: bool = False,
    ):
        import torch
        from transformers import AutoModelForCausalLM

        safe = weights_kwargs(model_path, allow_pickle)
        with model_load_errors(f"--policy {model_path}"):
            self.tokenizer = load_tokenizer(model_path, trust_remote_code)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        device = "cuda" if torch.cuda.is_available() else "cpu"
        torch_dtype = {
            "auto": torch.bfloat16 if device == "cuda" else torch.float32,
            "float32": torch.float32,
            "bfloat16": torch.bfloat16,
            "float16": torch.float16,
        }[dtype]
        model, _ = from_pretrained(
            AutoModelForCausalLM,
            model_path,
            f"--policy {model_path}",
            dtype=torch_dtype,
            trust_remote_code=trust_remote_code,
            **safe,
        )
        self._use(model.to(device).eval(), device, batch_size)

    @classmethod
    def wrap(cls, model: Any, tokenizer: Any, batch_size: int = 64) -> HFBackend:
        """A backend on a model already in memory, such as the policy a trainer is updating:
        the model keeps its device and mode, and prompts are tokenized the way TRL's
        trainers tokenize them (special tokens always added), so it sees what training sees."""
        backend = cls.__new__(cls)
        backend.tokenizer = tokenizer
        backend._use(model, next(model.parameters()).device, batch_size)
        backend.wrapped = True
        return backend

    def _use(self, model: Any, device: Any, batch_size: int) -> None:
        self.model, self.device, self.batch_size = model, device, batch_size
        self.stop_ids = self._stop_ids()
        self.context: int | None = getattr(model.config, "max_position_embeddings", None)
        self.wrapped = False
        """A model a trainer is updating (`wrap`): special tokens always added, as the
        trainer adds them, and generation under no_grad rather than inference_mode."""

    def _stop_ids(self) -> list[int]:
        """The tokenizer's EOS plus the model's own (chat models often end turns with another id)."""
        ids = [self.tokenizer.eos_token_id]
        extra = getattr(self.model.generation_config, "eos_token_id", None)
        ids += extra if isinstance(extra, list) else [extra]
        return list(dict.fromkeys(i for i in ids if i is not None))

    def _encode(self, batch: list[str]):
        # Chat templates usually write the BOS themselves; adding another shifts the model off-distribution.
        bos = self.tokenizer.bos_token
        add_special = self.wrapped or not (bos and all(p.startswith(bos) for p in batch))
        return self.tokenizer(
            batch,
            return_tensors="pt",
            padding=True,
            padding_side="left",  # a wrapped trainer's tokenizer may pad on the right
            add_special_tokens=add_special,
        ).to(self.device)

    def generate(
        self, prompts: list[str], sampling: Sampling, on_batch: OnBatch | None = None
    ) -> list[list[Completion]]:
        """`sampling.n` completions per prompt, in prompt order."""
        import torch

        flat = [p for p in prompts for _ in range(sampling.n)]
        kwargs = sampling_kwargs(sampling.temperature, sampling.top_p)
        results: list[Completion] = []
        for start in range(0, len(flat), self.batch_size):
            batch = flat[start : start + self.batch_size]
            enc = self._encode(batch)
            if self.context and enc["input_ids"].shape[1] > self.context:
                raise UsageError(
                    f"a prompt of {enc['input_ids'].shape[1]} tokens is longer than the "
                    f"policy's context of {self.context} tokens (shorten the problem text)"
                )
            if kwargs["do_sample"]:  # greedy draws nothing: a trainer's RNG stays as it was
                torch.manual_seed(sampling.seed * 1_000_003 + start)
            # A model in training must not get inference tensors in its buffers (its next
            # backward would fail on them); any other model takes the faster inference_mode.
            with torch.no_grad() if self.wrapped else torch.inference_mode():
                out = self.model.generate(
                    **enc,
                    max_new_tokens=sampling.max_new_tokens,
                    eos_token_id=self.stop_ids,
                    pad_token_id=self.tokenizer.pad_token_id,
                    **kwargs,
                )
            tokens = 0
            for row in out[:, enc["input_ids"].shape[1] :].tolist():
                completion = self._completion(row)
                tokens += completion.num_tokens
                results.append(completion)
            if on_batch:
                on_batch(len(batch), tokens)
        return _group(results, sampling.n)

    def _completion(self, row: list[int]) -> Completion:
        stop = next((i for i, token in enumerate(row) if token in self.stop_ids), None)
        kept = row if stop is None else row[:stop]
        text = self.tokenizer.decode(kept, skip_special_tokens=True)
        return Completion(text, len(kept) + (stop is not None), stop is not None)


class VLLMBackend:
    """vLLM's offline engine: continuous batching on one GPU (optional extra `tdrm-cli[vllm]`)."""

    def __init__(
        self,
        model_path: str,
        batch_size: int = 64,
        dtype: str = "auto",
        trust_remote_code: bool = False,
        allow_pickle: bool = False,
    ):
        safe = weights_kwargs(model_path, allow_pickle)
        try:
            from vllm import LLM
        except ImportError:
            raise UsageError(
                "--backend vllm: vllm is not installed (pip install 'tdrm-cli[vllm]')"
            ) from None
        import torch

        if not torch.cuda.is_available():
            raise UsageError("--backend vllm: needs a CUDA GPU (use --backend hf on the CPU)")
        self.llm = LLM(
            model=model_path,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            seed=0,
            load_format="safetensors" if safe["use_safetensors"] else "auto",
        )
        self.tokenizer = self.llm.get_tokenizer()
        # vLLM schedules sequences itself; batch_size only sets how often progress is reported.
        self.chunk = max(batch_size, 1) * 8

    def generate(
        self, prompts: list[str], sampling: Sampling, on_batch: OnBatch | None = None
    ) -> list[list[Completion]]:
        from vllm import SamplingParams

        flat = [p for p in prompts for _ in range(sampling.n)]
        # One seeded request per sequence: the output depends on (seed, position), not on vLLM's scheduling.
        params = [
            SamplingParams(
                n=1,
                temperature=max(sampling.temperature, 0.0),
                top_p=sampling.top_p,
                max_tokens=sampling.max_new_tokens,
                seed=(sampling.seed * 1_000_003 + i) % 2**63,
            )
            for i in range(len(flat))
        ]
        results: list[Completion] = []
        for start in range(0, len(flat), self.chunk):
            outputs = self.llm.generate(
                flat[start : start + self.chunk], params[start : start + self.chunk], use_tqdm=False
            )
            tokens = 0
            for output in outputs:
                out = output.outputs[0]
                results.append(
                    Completion(out.text, len(out.token_ids), out.finish_reason == "stop")
                )
                tokens += len(out.token_ids)
            if on_batch:
                on_batch(len(outputs), tokens)
        return _group(results, sampling.n)


BACKENDS: dict[str, Callable[..., Backend]] = {"hf": HFBackend, "vllm": VLLMBackend}


def check_backend(name: str) -> None:
    if name not in BACKENDS:
        raise UsageError(
            f"--backend {name}: unknown backend (known: {', '.join(sorted(BACKENDS))})"
        )


def load_backend(name: str, model_path: str, role: str = "policy", **kwargs: Any) -> Backend:
    """A backend for `model_path`; a model that cannot load is a one-line UsageError."""
    check_backend(name)
    try:
        return BACKENDS[name](model_path, **kwargs)
    except (OSError, ValueError) as e:  # e.g. a hub id without network, or broken weights
        first = first_line(e)
        raise UsageError(f"--{role} {model_path}: could not load the model ({first})") from None
