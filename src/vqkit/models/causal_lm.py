"""CausalLM: a Hugging Face decoder-only language model with vqkit's checkpoint format.

The models that vqkit trains or modifies (codebook-feature LMs, and later VQ output heads and
compressed KV caches and weights) wrap a `transformers` causal LM built from a config
dictionary. Any architecture that `AutoModelForCausalLM` supports works, so a Llama checkpoint
that a user loads with `transformers` can be wrapped with `CausalLM.from_hf`.

A checkpoint folder contains `config.json` (the constructor arguments, including the
transformers config as `lm_config`), `model.safetensors` and, when the model has one, the
tokenizer files that `PreTrainedTokenizerFast.save_pretrained` writes.
"""

from __future__ import annotations

import contextvars
import logging
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from vqkit.hub import VQKitModelMixin

logger = logging.getLogger(__name__)

# Keys of `PretrainedConfig.to_dict()` that describe where a model came from rather than its shape.
_PROVENANCE_KEYS = ("_name_or_path", "architectures", "transformers_version", "torch_dtype", "dtype")

# A language model that `from_hf` hands to `__init__` in place of building a random one.
_PREBUILT_LM: contextvars.ContextVar[PreTrainedModel | None] = contextvars.ContextVar("prebuilt_lm", default=None)


def lm_config_dict(config: Any) -> dict[str, Any]:
    """Return a transformers config as the JSON-ready `lm_config` dictionary of `CausalLM`."""
    values = config.to_dict()
    for key in _PROVENANCE_KEYS:
        values.pop(key, None)
    return values


class CausalLM(nn.Module, VQKitModelMixin):
    """A transformers causal language model, saved and loaded the vqkit way.

    Args:
        lm_config: transformers config as a dictionary with a "model_type" entry, for example
            ``{"model_type": "llama", "vocab_size": 4096, "hidden_size": 256, ...}``.

    Attributes:
        lm: the `transformers` model (`LlamaForCausalLM` for model_type "llama").
        tokenizer: a `PreTrainedTokenizerBase` saved with the checkpoint, or None for models
            whose token ids need none (TokFSM digits).
    """

    def __init__(self, lm_config: dict[str, Any]):
        super().__init__()
        if not isinstance(lm_config, dict) or "model_type" not in lm_config:
            raise ValueError(
                "lm_config must be a dict with a 'model_type' entry, such as {'model_type': 'llama', ...}; "
                f"got {lm_config!r:.200}"
            )
        prebuilt = _PREBUILT_LM.get()
        if prebuilt is not None:
            self.lm = prebuilt
        else:
            settings = dict(lm_config)
            config = AutoConfig.for_model(settings.pop("model_type"), **settings)
            self.lm = AutoModelForCausalLM.from_config(config)
        self.tokenizer: PreTrainedTokenizerBase | None = None

    @classmethod
    def from_hf(cls, lm: PreTrainedModel, tokenizer: PreTrainedTokenizerBase | None = None, **kwargs: Any):
        """Wrap an existing transformers model, for example one loaded with
        `AutoModelForCausalLM.from_pretrained`, without copying its weights.

        The wrapper uses `lm` itself: a `CodebookLM` attaches its hooks to `lm`'s modules, so
        calling `lm` directly afterwards also runs through the codebooks.

        Other keyword arguments go to the constructor (codebook settings for `CodebookLM`).
        """
        if not isinstance(lm, PreTrainedModel):
            raise TypeError(f"lm must be a transformers PreTrainedModel, got {type(lm).__name__}")
        token = _PREBUILT_LM.set(lm)
        try:
            model = cls(lm_config=lm_config_dict(lm.config), **kwargs)
        finally:
            _PREBUILT_LM.reset(token)
        model.tokenizer = tokenizer
        return model.to(next(lm.parameters()).device)

    @property
    def config(self):
        """The transformers config of the wrapped model."""
        return self.lm.config

    @property
    def vocab_size(self) -> int:
        return int(self.lm.config.vocab_size)

    def forward(self, input_ids: Tensor, labels: Tensor | None = None, **kwargs: Any):
        """Run the language model on long `input_ids` (B, T).

        With `labels` (B, T), the output's `loss` is the mean next-token cross-entropy in nats.
        The model shifts the labels itself.
        """
        self.check_token_ids(input_ids)
        return self.lm(input_ids=input_ids, labels=labels, **kwargs)

    def generate(self, input_ids: Tensor, **kwargs: Any) -> Tensor:
        """Continue long `input_ids` (B, T) with `transformers`' `generate`; returns (B, T + new)."""
        self.check_token_ids(input_ids)
        return self.lm.generate(input_ids=input_ids, **kwargs)

    @torch.no_grad()
    def sample(self, input_ids: Tensor, max_new_tokens: int, *, temperature: float = 1.0, seed: int | None = None) -> Tensor:
        """Sample `max_new_tokens` tokens after long `input_ids` (B, T); returns long (B, max_new_tokens).

        Tokens are drawn from the whole softmax at `temperature` (no top-k or top-p), and an EOS
        token does not stop generation. With `seed`, the draws use a generator seeded with it,
        and the global torch random state is left as it was.
        """
        pad_token_id = self.lm.config.pad_token_id
        if pad_token_id is None:
            pad_token_id = self.lm.config.eos_token_id if self.lm.config.eos_token_id is not None else 0
        with torch.random.fork_rng(devices=[], enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            output = self.generate(
                input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=max_new_tokens,
                do_sample=True,
                top_k=0,
                top_p=1.0,
                temperature=temperature,
                eos_token_id=None,
                pad_token_id=pad_token_id,
            )
        return output[:, input_ids.shape[1] :]

    def check_token_ids(self, input_ids: Tensor) -> None:
        """Raise ValueError unless `input_ids` is a non-empty long (B, T) tensor of ids below the vocabulary size."""
        if not isinstance(input_ids, Tensor) or input_ids.ndim != 2:
            shape = tuple(input_ids.shape) if isinstance(input_ids, Tensor) else type(input_ids).__name__
            raise ValueError(f"input_ids must be a long tensor shaped (batch, tokens), got {shape}")
        if input_ids.numel() == 0:
            raise ValueError("input_ids is empty: pass at least one token (for text, a non-empty prompt)")
        if input_ids.dtype != torch.long:
            raise ValueError(f"input_ids must have dtype torch.long, got {input_ids.dtype}")
        low, high = int(input_ids.min()), int(input_ids.max())
        if low < 0 or high >= self.vocab_size:
            raise ValueError(f"token ids must lie in [0, {self.vocab_size - 1}], got values in [{low}, {high}]")

    @torch.no_grad()
    def perplexity(self, windows: Iterable[Tensor], batch_size: int = 8, progress: bool = False) -> float:
        """Return exp(mean next-token cross-entropy) over token windows, each long (T,).

        Every window is scored independently, so the first token of each is context only.
        """
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        total_nats, total_tokens = 0.0, 0
        batch: list[Tensor] = []
        windows = list(windows)
        bar = tqdm(total=len(windows), desc="perplexity", unit="window", disable=not progress)
        try:
            for index, window in enumerate(windows):
                batch.append(window)
                if len(batch) < batch_size and index + 1 < len(windows):
                    continue
                tokens = torch.stack(batch).to(device)
                logits = self(tokens).logits[:, :-1].float()  # (B, T - 1, V)
                nats = nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten(), reduction="sum")
                total_nats += float(nats)
                total_tokens += tokens[:, 1:].numel()
                bar.update(len(batch))
                batch = []
        finally:
            bar.close()
            self.train(was_training)
        if total_tokens == 0:
            raise ValueError("perplexity needs at least one window of two or more tokens")
        return math.exp(total_nats / total_tokens)

    # ---- checkpoint files: the tokenizer travels with the weights ----------------------------

    def _save_pretrained(self, save_directory: Path) -> None:
        super()._save_pretrained(save_directory)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(str(save_directory))

    @classmethod
    def _from_pretrained(cls, *, model_id: str, **kwargs: Any):
        model = super()._from_pretrained(model_id=model_id, **kwargs)
        folder = Path(model_id)
        if (folder / "tokenizer_config.json").is_file():
            from transformers import AutoTokenizer

            model.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        elif not folder.exists():
            model.tokenizer = _hub_tokenizer(model_id, kwargs)
        return model


def _hub_tokenizer(repo_id: str, kwargs: dict[str, Any]) -> PreTrainedTokenizerBase | None:
    """Load the tokenizer of a Hub repo, or return None when the repo has no tokenizer files."""
    from huggingface_hub.errors import EntryNotFoundError
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(
            repo_id, revision=kwargs.get("revision"), cache_dir=kwargs.get("cache_dir"), token=kwargs.get("token")
        )
    except (OSError, EntryNotFoundError, ValueError) as error:
        logger.info("No tokenizer loaded from %s: %s", repo_id, error)
        return None
