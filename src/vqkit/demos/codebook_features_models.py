"""Models of the demo's "Codebook features" tab: the model choices, their loading, and the held-out sample.

The code browser and the code search read the held-out sample, recorded once per model by
`ModelStore.activations`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
import torch
from torch import Tensor

import vqkit
from vqkit import registry
from vqkit.data.fsm import FSM, FSMSequences
from vqkit.data.text import TokenWindows, load_documents, split_documents
from vqkit.data.text_tokenizer import encode_texts
from vqkit.evals.codebook_text_metrics import Activations, collect_activations
from vqkit.models.codebook_lm import CodebookLM

logger = logging.getLogger(__name__)

TEXT_MODEL_ENV = "VQKIT_CODEBOOK_TEXT_MODEL"
TOKFSM_MODEL_ENV = "VQKIT_CODEBOOK_TOKFSM_MODEL"
DEFAULT_TEXT_MODEL = "codebook-lm-text-k8"
DEFAULT_TOKFSM_MODEL = "codebook-lm-tokfsm-k1"

# The held-out sample: 64 x 128 tokens keeps recording the codes of every site to a few
# seconds on CPU. Windows are shortened to the model's max_position_embeddings.
SAMPLE_WINDOWS = 64
WINDOW_TOKENS = 128
FSM_WALK_STATES = 64
# Training draws its walks with the config's seed, 0 in every configuration of
# vqkit.models.lm_train_config, and walks of another seed are independent of those.
HELD_OUT_FSM_SEED = 1


@dataclass(frozen=True)
class ModelChoice:
    """A model offered in the tab's model dropdown."""

    name: str
    """Label in the dropdown and in messages."""
    source: str | Callable[[], CodebookLM]
    """A registered model name, a checkpoint folder, or a function that returns the model."""
    held_out_texts: tuple[str, ...] | None = None
    """Texts that the browser of a text model reads in place of the corpus test split."""


@dataclass
class LoadedModel:
    """A loaded model, the FSM of a TokFSM model, and the codes recorded on its held-out sample."""

    choice: ModelChoice
    model: CodebookLM
    fsm: FSM | None
    """The machine of a TokFSM model, or None for a text model."""
    lock: threading.Lock = field(default_factory=threading.Lock)
    """Held around every forward pass. Recording and steering set attributes of the model's
    bottlenecks, and gradio runs the events of different listeners in parallel threads."""
    activations: Activations | None = None


def default_choices() -> list[ModelChoice]:
    """Return the text and TokFSM models named by the environment, else the registered defaults."""
    text = os.environ.get(TEXT_MODEL_ENV) or DEFAULT_TEXT_MODEL
    tokfsm = os.environ.get(TOKFSM_MODEL_ENV) or DEFAULT_TOKFSM_MODEL
    return [ModelChoice(text, text), ModelChoice(tokfsm, tokfsm)]


class ModelStore:
    """The tab's models by name, loaded on first use and kept while the app runs.

    A model that fails to load is not kept, so the next request tries again, for example once
    its checkpoint has been trained.
    """

    def __init__(self, choices: Sequence[ModelChoice]):
        names = [choice.name for choice in choices]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"model choices need distinct, non-empty names, got {names}")
        self.choices = {choice.name: choice for choice in choices}
        self._loaded: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()

    def get(self, name: str | None) -> LoadedModel:
        """Return the model called `name`, loading it on first use. Raises gr.Error when it cannot load."""
        if not name:
            raise gr.Error(f"Choose a model first: {', '.join(self.choices)}.")
        choice = self.choices.get(name)
        if choice is None:
            raise gr.Error(f"unknown model {name!r}: choose one of {', '.join(self.choices)}.")
        with self._lock:
            if name not in self._loaded:
                self._loaded[name] = load_choice(choice)
            return self._loaded[name]

    def activations(self, loaded: LoadedModel) -> Activations:
        """Return the codes of every site on the model's held-out sample, recording them on first use."""
        with loaded.lock:
            if loaded.activations is None:
                started = time.perf_counter()
                windows = held_out_windows(loaded)
                loaded.activations = collect_activations(loaded.model, list(windows))
                logger.info(
                    "Recorded the codes of %s on %d x %d held-out tokens in %.1f s",
                    loaded.choice.name,
                    windows.shape[0],
                    windows.shape[1],
                    time.perf_counter() - started,
                )
            return loaded.activations


# ---- loading ----------------------------------------------------------------------------------


def load_codebook_lm(source: str) -> CodebookLM:
    """Load a `CodebookLM` in eval mode from a registered model name or a checkpoint folder.

    Raises FileNotFoundError when `source` is neither, or when a registered model's checkpoint
    folder is missing (the message then gives the train command), and TypeError when the
    model is not a `CodebookLM`.
    """
    if registry.is_registered(source):
        model = vqkit.load(source)
    elif Path(source).is_dir():
        model = CodebookLM.from_pretrained(source)
    else:
        known = ", ".join(registry.list_models()) or "none are registered"
        raise FileNotFoundError(
            f"model {source!r} not found: it is neither a registered model name (known: {known}) "
            "nor a checkpoint folder"
        )
    if not isinstance(model, CodebookLM):
        raise TypeError(
            f"model {source!r} is a {type(model).__name__} without codebooks: choose a CodebookLM such as "
            f"{DEFAULT_TEXT_MODEL!r} or {DEFAULT_TOKFSM_MODEL!r}"
        )
    return model.eval()


def load_choice(choice: ModelChoice) -> LoadedModel:
    """Load the model of `choice` and find its task. Raises gr.Error naming the model when that fails."""
    started = time.perf_counter()
    try:
        model = choice.source() if callable(choice.source) else load_codebook_lm(choice.source)
    except (FileNotFoundError, ValueError, TypeError, OSError, RuntimeError) as error:
        logger.error("Codebook features tab: cannot load model %r: %s", choice.name, error)
        raise gr.Error(f"Model {choice.name!r} could not be loaded: {error}") from None
    model.eval()

    fsm = None
    if model.tokenizer is None:
        fsm = FSM()
        if model.vocab_size != fsm.vocab_size:
            raise gr.Error(
                f"Model {choice.name!r} has no tokenizer and {model.vocab_size} token ids, so it is neither a "
                f"text model nor a TokFSM model, which has {fsm.vocab_size} ids (10 digits and BOS)."
            )
    logger.info("Loaded codebook model %r in %.1f s", choice.name, time.perf_counter() - started)
    return LoadedModel(choice, model, fsm)


def describe_choices(choices: Sequence[ModelChoice]) -> str:
    """Return Markdown that lists the models and gives the train command of each missing checkpoint."""
    lines = []
    for choice in choices:
        source = choice.source
        if callable(source):
            lines.append(f"- `{choice.name}`: loads when chosen.")
        elif registry.is_registered(source):
            entry = registry.get_model_entry(source)
            if entry.path.is_dir():
                lines.append(f"- `{choice.name}`: {entry.description}. Loads when chosen.")
            elif entry.train_command:
                lines.append(f"- `{choice.name}`: not trained yet. Train it with `{entry.train_command}`.")
            else:
                lines.append(f"- `{choice.name}`: checkpoint folder {entry.path} not found.")
        elif Path(source).is_dir():
            lines.append(f"- `{choice.name}`: checkpoint folder {source}. Loads when chosen.")
        else:
            lines.append(f"- `{choice.name}`: not found; it is neither a registered model nor a folder.")
    lines.append(
        f"\nSet {TEXT_MODEL_ENV} or {TOKFSM_MODEL_ENV} to a registered model name or a checkpoint "
        "folder to offer another model, then restart `vqkit demo`."
    )
    return "\n".join(lines)


# ---- held-out sample --------------------------------------------------------------------------


def held_out_windows(loaded: LoadedModel) -> Tensor:
    """Return the long (W, T) held-out windows that the code browser and search read."""
    positions = int(loaded.model.config.max_position_embeddings)
    fsm = loaded.fsm
    if fsm is not None:
        states = min(FSM_WALK_STATES, (positions - 1) // fsm.digits)
        walks = FSMSequences(fsm, states, seed=HELD_OUT_FSM_SEED)
        return torch.stack([walks[index] for index in range(SAMPLE_WINDOWS)])

    texts = loaded.choice.held_out_texts
    if texts is None:
        # NOTE: "auto" picks the source that this machine has. A model trained where the other
        # source was picked may have seen these documents.
        texts = [document.text for document in split_documents(load_documents("auto"))["test"]]
    return text_windows(loaded.model.tokenizer, texts, min(WINDOW_TOKENS, positions))


def text_windows(tokenizer, texts: Sequence[str], seq_len: int, count: int = SAMPLE_WINDOWS) -> Tensor:
    """Tokenize `texts`, each followed by the end-of-text token, and return up to `count`
    non-overlapping long (seq_len,) windows evenly spaced over them, as (W, seq_len).

    Windows are shortened when the texts have fewer than seq_len + 1 tokens.
    """
    separator = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    ids = encode_texts(tokenizer, list(texts), progress=False)
    flat = torch.tensor([token for document in ids for token in (*document, *separator)], dtype=torch.long)
    if flat.numel() < 2:
        raise gr.Error("The held-out texts have fewer than 2 tokens, so there is nothing to browse.")
    windows = TokenWindows(flat, min(seq_len, flat.numel() - 1), mode="sequential")
    # With count <= len(windows), consecutive picks are at least 1 apart, so rounding keeps them distinct.
    picks = torch.linspace(0, len(windows) - 1, min(count, len(windows))).round().long().tolist()
    return torch.stack([windows[index] for index in picks])


def describe_sample(loaded: LoadedModel) -> str:
    """Return a phrase that describes the held-out sample, for the tab's summaries."""
    positions = int(loaded.model.config.max_position_embeddings)
    if loaded.fsm is not None:
        states = min(FSM_WALK_STATES, (positions - 1) // loaded.fsm.digits)
        return f"{SAMPLE_WINDOWS} walks of {states} states drawn with seed {HELD_OUT_FSM_SEED} (training uses seed 0)"
    source = "the held-out texts given to the tab" if loaded.choice.held_out_texts else "the corpus test split"
    return f"up to {SAMPLE_WINDOWS} windows of {min(WINDOW_TOKENS, positions)} tokens of {source}"
