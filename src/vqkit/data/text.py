"""The text corpus of the codebook-feature language models: Python's documentation as tokens.

`TextCorpus.load()` reads the documents (`vqkit.data.text_documents`), splits them into
train, validation and test by a hash of each document's name, trains a byte-level BPE
tokenizer on the train split (`vqkit.data.text_tokenizer`) and tokenizes every split. The
results are cached, so only the first load trains and tokenizes::

    corpus = TextCorpus.load(vocab_size=4096)
    windows = corpus.windows("train", seq_len=256, seed=0)
    batch = torch.stack([windows[i] for i in range(8)])  # LongTensor (8, 256)

The cache folder is `$VQKIT_CACHE_DIR`, else `$XDG_CACHE_HOME/vqkit`, else `~/.cache/vqkit`.
Each corpus gets a subfolder `text-corpus/{source}-vocab{vocab_size}-{key}`, where the key is
a hash of the selected documents and the build settings, so a changed corpus is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torch.utils.data import Dataset

from vqkit.data.common import DEFAULT_LENGTH, check_index, item_rng
from vqkit.data.text_documents import SOURCES, Document, load_documents, resolve_source
from vqkit.data.text_tokenizer import (
    END_OF_TEXT,
    MIN_PAIR_FREQUENCY,
    MIN_VOCAB_SIZE,
    encode_texts,
    train_tokenizer,
)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

__all__ = [
    "SOURCES",
    "SPLITS",
    "Document",
    "TextCorpus",
    "TokenWindows",
    "default_cache_dir",
    "document_split",
    "load_documents",
    "resolve_source",
    "split_documents",
    "train_tokenizer",
]

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
# Upper bounds of a document's hash fraction for train and validation: about 90% and 5% of
# the documents. The rest, about 5%, are test documents.
_SPLIT_BOUNDS = (("train", 0.90), ("validation", 0.95))

# Bump when the cache layout or the way tokens are built changes, so that old caches are not read.
CACHE_FORMAT_VERSION = 1
CORPUS_SUBFOLDER = "text-corpus"
TOKENIZER_FOLDER = "tokenizer"
TOKENS_FILE = "tokens.safetensors"
METADATA_FILE = "corpus.json"
WINDOW_MODES = ("random", "sequential")


def _hash_fraction(name: str) -> float:
    """Map `name` to a number in [0, 1) by SHA-1, the same on every machine and Python version."""
    digest = hashlib.sha1(name.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def document_split(name: str) -> str:
    """Return the split ("train", "validation" or "test") of the document called `name`."""
    fraction = _hash_fraction(name)
    for split, bound in _SPLIT_BOUNDS:
        if fraction < bound:
            return split
    return "test"


def split_documents(
    documents: Iterable[Document], max_documents_per_split: int | None = None
) -> dict[str, list[Document]]:
    """Group `documents` by `document_split`, each group sorted by name.

    A document's split depends on its name only, so adding or removing other documents never
    moves it. `max_documents_per_split` keeps that many documents of each split, chosen by
    the hash of their names, for small configurations and tests. The kept documents stay in
    their splits, so a small configuration never trains on a document that a full one
    evaluates on.
    """
    if max_documents_per_split is not None and (
        isinstance(max_documents_per_split, bool)
        or not isinstance(max_documents_per_split, int)
        or max_documents_per_split < 1
    ):
        raise ValueError(f"max_documents_per_split must be a positive integer or None, got {max_documents_per_split!r}")

    splits: dict[str, list[Document]] = {split: [] for split in SPLITS}
    for document in documents:
        splits[document_split(document.name)].append(document)
    for split, members in splits.items():
        if max_documents_per_split is not None:
            members = sorted(members, key=lambda doc: _hash_fraction(doc.name))[:max_documents_per_split]
        splits[split] = sorted(members, key=lambda doc: doc.name)
    return splits


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: choose one of {', '.join(SPLITS)}")
    return split


def default_cache_dir() -> Path:
    """Return `$VQKIT_CACHE_DIR`, else `$XDG_CACHE_HOME/vqkit`, else `~/.cache/vqkit`."""
    if os.environ.get("VQKIT_CACHE_DIR"):
        return Path(os.environ["VQKIT_CACHE_DIR"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "vqkit"
    return Path.home() / ".cache" / "vqkit"


def corpus_key(splits: dict[str, list[Document]], vocab_size: int) -> str:
    """Return a SHA-1 hex digest of the split documents and of every setting that changes the built tokens."""
    import tokenizers

    digest = hashlib.sha1()
    settings = {
        "format": CACHE_FORMAT_VERSION,
        "vocab_size": vocab_size,
        "min_pair_frequency": MIN_PAIR_FREQUENCY,
        "tokenizers": tokenizers.__version__,
    }
    digest.update(json.dumps(settings, sort_keys=True).encode("utf-8"))
    for split in SPLITS:
        for document in splits[split]:
            for part in (split, document.name, document.text):
                encoded = part.encode("utf-8")
                digest.update(len(encoded).to_bytes(8, "big"))
                digest.update(encoded)
    return digest.hexdigest()


def _storage_dtype(vocab_size: int) -> torch.dtype:
    return torch.int16 if vocab_size <= 2**15 else torch.int32


class TextCorpus:
    """A tokenizer and the token ids of each split, loaded from a cache folder built by `load`.

    The tokens of a split are one flat sequence: the documents of the split in name order,
    each followed by `<|endoftext|>`.
    """

    def __init__(self, folder: Path, tokenizer: PreTrainedTokenizerFast, tokens: dict[str, Tensor], metadata: dict):
        self.folder = folder
        self.tokenizer = tokenizer
        self.metadata = metadata
        self._tokens = tokens

    @classmethod
    def load(
        cls,
        source: str = "auto",
        vocab_size: int = 4096,
        cache_dir: str | os.PathLike[str] | None = None,
        *,
        max_documents_per_split: int | None = None,
        max_document_chars: int | None = None,
        rebuild: bool = False,
        progress: bool = True,
    ) -> TextCorpus:
        """Load the corpus of `source` with a `vocab_size` tokenizer from the cache, building it on a miss.

        `source` is as in `load_documents`. `max_documents_per_split` (see `split_documents`)
        and `max_document_chars` (see `load_documents`) make small corpora for tests and tiny
        configurations. `cache_dir` defaults to `default_cache_dir()`. With `rebuild`, or
        when the cached files cannot be read, the corpus is built again and replaces them.
        A tqdm bar shows the tokenization when `progress`.
        """
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < MIN_VOCAB_SIZE:
            raise ValueError(f"vocab_size must be an integer of at least {MIN_VOCAB_SIZE}, got {vocab_size!r}")
        source = resolve_source(source)
        documents = load_documents(source, max_document_chars=max_document_chars)
        splits = split_documents(documents, max_documents_per_split)
        key = corpus_key(splits, vocab_size)
        root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        folder = root / CORPUS_SUBFOLDER / f"{source}-vocab{vocab_size}-{key[:12]}"

        if folder.is_dir() and not rebuild:
            try:
                corpus = cls._read(folder)
            except (OSError, ValueError, KeyError) as error:
                logger.warning("Rebuilding the text corpus in %s because its cache cannot be read: %s", folder, error)
            else:
                logger.info("Loaded the text corpus from %s", folder)
                return corpus

        _build(folder, splits, source=source, vocab_size=vocab_size, key=key, progress=progress)
        return cls._read(folder)

    @classmethod
    def _read(cls, folder: Path) -> TextCorpus:
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        from transformers import PreTrainedTokenizerFast

        metadata = json.loads((folder / METADATA_FILE).read_text(encoding="utf-8"))
        if metadata.get("format") != CACHE_FORMAT_VERSION:
            raise ValueError(f"cache format {metadata.get('format')!r} is not {CACHE_FORMAT_VERSION}")
        try:
            stored = load_file(os.fspath(folder / TOKENS_FILE))
        except SafetensorError as error:
            raise ValueError(f"{TOKENS_FILE} is not valid safetensors: {error}") from error
        tokens = {split: stored[split].long() for split in SPLITS}
        tokenizer = PreTrainedTokenizerFast.from_pretrained(os.fspath(folder / TOKENIZER_FOLDER))
        for split in SPLITS:
            if tokens[split].numel() and int(tokens[split].max()) >= len(tokenizer):
                raise ValueError(f"{split} tokens contain ids outside the {len(tokenizer)}-token vocabulary")
        return cls(folder, tokenizer, tokens, metadata)

    @property
    def source(self) -> str:
        """The source the documents came from: "python-docs" or "docstrings"."""
        return self.metadata["source"]

    def tokens(self, split: str) -> Tensor:
        """Return the token ids of `split` as a LongTensor (N,). The tensor is shared, so do not modify it."""
        return self._tokens[_check_split(split)]

    def num_tokens(self, split: str) -> int:
        return self.tokens(split).numel()

    def document_names(self, split: str) -> list[str]:
        return list(self.metadata["splits"][_check_split(split)]["documents"])

    def stats(self) -> dict[str, dict[str, int]]:
        """Return the number of documents, characters and tokens of each split."""
        return {
            split: {key: value for key, value in self.metadata["splits"][split].items() if key != "documents"}
            for split in SPLITS
        }

    def windows(
        self, split: str, seq_len: int, mode: str = "random", seed: int = 0, length: int | None = None
    ) -> TokenWindows:
        """Return `TokenWindows` over the tokens of `split`."""
        return TokenWindows(self.tokens(split), seq_len, mode=mode, seed=seed, length=length, split=split)


def _build(
    folder: Path, splits: dict[str, list[Document]], *, source: str, vocab_size: int, key: str, progress: bool
) -> None:
    """Train the tokenizer, tokenize the splits and write them to `folder`, replacing it whole."""
    from safetensors.torch import save_file

    from vqkit.hub import apply_umask_to_file

    if not splits["train"]:
        raise ValueError(f"the train split of source {source!r} has no documents, so no tokenizer can be trained")

    started = time.perf_counter()
    logger.info("Building the text corpus in %s", folder)
    tokenizer = train_tokenizer((doc.text for doc in splits["train"]), vocab_size=vocab_size)
    logger.info("Trained a %d-token BPE tokenizer on %d documents", len(tokenizer), len(splits["train"]))

    end_of_text = tokenizer.convert_tokens_to_ids(END_OF_TEXT)
    tensors = {}
    split_metadata = {}
    for split in SPLITS:
        documents = splits[split]
        texts = [doc.text for doc in documents]
        ids = encode_texts(tokenizer, texts, progress=progress, description=f"tokenize {split}")
        flat = [token for document_ids in ids for token in (*document_ids, end_of_text)]
        tensors[split] = torch.tensor(flat, dtype=_storage_dtype(len(tokenizer)))
        split_metadata[split] = {
            "num_documents": len(documents),
            "num_chars": sum(len(doc.text) for doc in documents),
            "num_tokens": len(flat),
            "documents": [doc.name for doc in documents],
        }

    folder.parent.mkdir(parents=True, exist_ok=True)
    # mkdir applies the umask, so the renamed folder gets the permissions of one created directly.
    staging = folder.with_name(f".{folder.name}.building-{uuid.uuid4().hex[:8]}")
    staging.mkdir()
    try:
        tokenizer.save_pretrained(os.fspath(staging / TOKENIZER_FOLDER))
        save_file(tensors, os.fspath(staging / TOKENS_FILE))
        # safetensors writes mode 0o600 whatever the umask.
        apply_umask_to_file(staging / TOKENS_FILE)
        metadata = {
            "format": CACHE_FORMAT_VERSION,
            "source": source,
            "vocab_size": len(tokenizer),
            "requested_vocab_size": vocab_size,
            "key": key,
            "build_seconds": round(time.perf_counter() - started, 3),
            "splits": split_metadata,
        }
        (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=1) + "\n", encoding="utf-8")
        _replace_folder(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("Built the text corpus in %s in %.1f s", folder, time.perf_counter() - started)


def _replace_folder(staging: Path, folder: Path) -> None:
    """Rename `staging` to `folder`. An existing `folder` is renamed aside first, then deleted."""
    if not folder.exists():
        try:
            os.replace(staging, folder)
            return
        except OSError:
            # Another process finished the same build first. Its folder was built from the same
            # inputs, so this build replaces it as it would any existing folder.
            if not folder.is_dir():
                raise
    old = folder.with_name(f".{folder.name}.old-{uuid.uuid4().hex[:8]}")
    os.replace(folder, old)
    os.replace(staging, folder)
    shutil.rmtree(old, ignore_errors=True)


class TokenWindows(Dataset):
    """Windows of `seq_len` consecutive token ids from a flat token sequence, as LongTensor (seq_len,).

    Every window is followed by at least one more token, so `tokens[offset + seq_len]` is the
    next-token target of the window's last position. The sequence needs `seq_len + 1` tokens.

    Args:
        tokens: the token sequence, an integer tensor (N,), such as `TextCorpus.tokens(split)`.
        seq_len: window length in tokens.
        mode: "random" (item i starts at an offset drawn uniformly from
            0 .. N - seq_len - 1 by `item_rng(seed, i)`, for training) or "sequential" (item i
            starts at i * seq_len, so the windows do not overlap, for evaluation).
        seed: seed of the random offsets. Sequential mode ignores it.
        length: number of items in random mode, `DEFAULT_LENGTH` by default. Sequential mode
            has (N - 1) // seq_len items and rejects `length`.
        split: the split's name, used in error messages.
    """

    def __init__(
        self,
        tokens: Tensor,
        seq_len: int,
        mode: str = "random",
        seed: int = 0,
        length: int | None = None,
        split: str | None = None,
    ):
        if tokens.ndim != 1 or tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
            raise ValueError(f"tokens must be a 1-D integer tensor, got {tuple(tokens.shape)} {tokens.dtype}")
        if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
            raise ValueError(f"seq_len must be a positive integer, got {seq_len!r}")
        if mode not in WINDOW_MODES:
            raise ValueError(f"unknown window mode {mode!r}: choose one of {', '.join(WINDOW_MODES)}")
        described = f"split {split!r}" if split is not None else "the token sequence"
        if tokens.numel() < seq_len + 1:
            raise ValueError(
                f"{described} has {tokens.numel()} tokens, fewer than seq_len + 1 = {seq_len + 1}: "
                "use a shorter seq_len or a larger corpus"
            )
        if mode == "sequential" and length is not None:
            raise ValueError("length applies to random windows only: sequential windows cover the tokens once")
        if length is not None and (isinstance(length, bool) or not isinstance(length, int) or length < 1):
            raise ValueError(f"length must be a positive integer, got {length!r}")

        self.tokens = tokens
        self.seq_len = seq_len
        self.mode = mode
        self.seed = seed
        if mode == "sequential":
            self.length = (tokens.numel() - 1) // seq_len
        else:
            self.length = DEFAULT_LENGTH if length is None else length

    def __len__(self) -> int:
        return self.length

    def window_offset(self, index: int) -> int:
        """Return the position in `tokens` where item `index` starts."""
        index = check_index(index, self.length)
        if self.mode == "sequential":
            return index * self.seq_len
        return int(item_rng(self.seed, index).integers(self.tokens.numel() - self.seq_len))

    def __getitem__(self, index: int) -> Tensor:
        offset = self.window_offset(index)
        return self.tokens[offset : offset + self.seq_len].to(torch.long, copy=True)
