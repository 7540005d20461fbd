"""Named configurations of `vqkit train codebook-lm`: the plain language models ("base" stage)
and their codebook fine-tunes ("codebook" stage), on TokFSM and on Python's documentation."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

TASKS = ("tokfsm", "text")
STAGES = ("base", "codebook")


@dataclass(frozen=True)
class LMTrainConfig:
    """Settings of one language-model training run.

    `lm_config` is the transformers config of the model that the "base" stage trains from
    scratch. The "codebook" stage instead reads the model from `--base` and adds the codebooks
    that `codebook` describes, as keyword arguments of `CodebookLM`.
    """

    task: str
    stage: str
    lm_config: dict[str, Any] = field(default_factory=dict)
    codebook: dict[str, Any] = field(default_factory=dict)
    steps: int = 1000
    batch_size: int = 64
    seq_len: int = 256
    """Tokens per training window on text; TokFSM sequences have 1 + 2 * fsm_states_per_sequence."""
    learning_rate: float = 1e-3
    lm_learning_rate: float | None = None
    """Peak learning rate of the language model's own weights in the codebook stage, where
    `learning_rate` then applies to the codes. None uses `learning_rate`; 0 freezes the LM."""
    warmup_steps: int = 100
    final_lr_fraction: float = 0.1
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    eval_every: int = 250
    save_every: int = 250
    seed: int = 0
    fsm_states_per_sequence: int = 64
    text_source: str = "auto"
    text_vocab_size: int = 4096
    text_max_documents: int | None = None
    """Use only N documents of each split of the text corpus (tiny test configurations)."""
    eval_windows: int = 64
    """Validation windows scored at each evaluation on text."""

    def validate(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task {self.task!r} is not one of {TASKS}")
        if self.stage not in STAGES:
            raise ValueError(f"stage {self.stage!r} is not one of {STAGES}")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"learning rate {self.learning_rate} must be a positive number (--lr)")
        if self.lm_learning_rate is not None and self.lm_learning_rate < 0:
            raise ValueError(f"lm_learning_rate={self.lm_learning_rate} must be 0 (frozen) or positive")
        if self.stage == "base" and "model_type" not in self.lm_config:
            raise ValueError("a base-stage configuration needs lm_config with a 'model_type' entry")
        for name in ("steps", "batch_size", "seq_len", "eval_every", "save_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be at least 1")


def _llama(vocab_size: int, hidden: int, layers: int, heads: int, kv_heads: int, ffn: int, positions: int) -> dict[str, Any]:
    return {
        "model_type": "llama",
        "vocab_size": vocab_size,
        "hidden_size": hidden,
        "intermediate_size": ffn,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "max_position_embeddings": positions,
        "rope_theta": 10000.0,
        "tie_word_embeddings": True,
    }


# TokFSM: 4 layers, d=128, 4 heads, BOS id 10 (see vqkit.data.fsm).
_TOKFSM_LM = {**_llama(11, 128, 4, 4, 4, 512, 256), "bos_token_id": 10, "eos_token_id": 10, "pad_token_id": 10}
# Text: a byte-level BPE of 4096 tokens, 4 layers, d=256, grouped-query attention with 2 KV heads.
# Token 0 is the tokenizer's <|endoftext|>, which serves as BOS, EOS and padding.
_TEXT_SPECIAL_TOKENS = {"bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0}
_TEXT_LM = {**_llama(4096, 256, 4, 4, 2, 768, 512), **_TEXT_SPECIAL_TOKENS}

_TINY_TOKFSM_LM = {**_llama(11, 32, 2, 2, 2, 64, 64), "bos_token_id": 10, "eos_token_id": 10, "pad_token_id": 10}


def _tiny(task: str, stage: str, **settings: Any) -> LMTrainConfig:
    """Return a test configuration: 4 steps of tiny batches, evaluated and saved every 2 steps."""
    if task == "tokfsm":
        sizes = {"batch_size": 4, "fsm_states_per_sequence": 8}
    else:
        sizes = {"batch_size": 2, "seq_len": 32, "text_vocab_size": 300, "text_max_documents": 20, "eval_windows": 4}
    return LMTrainConfig(
        task=task, stage=stage, steps=4, eval_every=2, save_every=2, warmup_steps=1, **sizes, **settings
    )


# The codebook configurations freeze the LM and train only the codes, with the LM loss
# (through the codes) plus the codebook loss.
# NOTE: fine-tuning the LM weights as well raised the TokFSM LM loss within 80 steps in every
# run we tried, at peak learning rates from 1e-4 to 1e-3 and commitment weights from 0 to 2.
# The straight-through gradient moves the activations away from their codes, so these short
# CPU runs keep the base weights.
CONFIGS: dict[str, LMTrainConfig] = {
    "tokfsm-base": LMTrainConfig(
        task="tokfsm", stage="base", lm_config=_TOKFSM_LM, steps=1500, batch_size=64, learning_rate=2e-3
    ),
    "tokfsm-codebook": LMTrainConfig(
        task="tokfsm",
        stage="codebook",
        codebook={"codebook_size": 1000, "k": 1, "dead_code_threshold": 100},
        steps=600,
        batch_size=64,
        learning_rate=1e-3,
        lm_learning_rate=0.0,
        warmup_steps=50,
    ),
    # The whole model trained from scratch with its codebooks, as "Codebook Features" trains
    # its TokFSM models. NOTE: at this learning rate the codebook loss diverged within 100 steps.
    "tokfsm-codebook-scratch": LMTrainConfig(
        task="tokfsm",
        stage="codebook",
        lm_config=_TOKFSM_LM,
        codebook={"codebook_size": 1000, "k": 1, "dead_code_threshold": 100},
        steps=1500,
        batch_size=64,
        learning_rate=2e-3,
    ),
    "text-base": LMTrainConfig(
        task="text", stage="base", lm_config=_TEXT_LM, steps=2000, batch_size=16, seq_len=256, learning_rate=2e-3
    ),
    "text-codebook": LMTrainConfig(
        task="text",
        stage="codebook",
        # Attention outputs only, one codebook per head, as the "Codebook Features" paper does
        # for its language models on WikiText-103.
        codebook={"codebook_size": 2000, "k": 8, "sites": ["attn"], "dead_code_threshold": 200},
        steps=600,
        batch_size=16,
        seq_len=256,
        learning_rate=1e-3,
        lm_learning_rate=0.0,
        warmup_steps=50,
    ),
    # Tiny versions for tests: a few steps of a 2-layer model.
    "tiny-tokfsm-base": _tiny("tokfsm", "base", lm_config=_TINY_TOKFSM_LM),
    "tiny-tokfsm-codebook": _tiny("tokfsm", "codebook", codebook={"codebook_size": 16, "k": 1, "dead_code_threshold": 2}),
    "tiny-text-base": _tiny("text", "base", lm_config={**_llama(300, 32, 2, 2, 1, 64, 64), **_TEXT_SPECIAL_TOKENS}),
    "tiny-text-codebook": _tiny("text", "codebook", codebook={"codebook_size": 32, "k": 2, "dead_code_threshold": 2}),
}

# Settings that `--resume` may change; any other difference would change the run's loss curve.
RESUMABLE_CHANGES = ("steps", "eval_every", "save_every")


def config_to_json(config: LMTrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


def config_from_json(values: dict[str, Any]) -> LMTrainConfig:
    known = {f.name for f in dataclasses.fields(LMTrainConfig)}
    return LMTrainConfig(**{name: value for name, value in values.items() if name in known})
