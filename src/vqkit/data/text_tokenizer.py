"""Byte-level BPE tokenizers trained locally with Hugging Face `tokenizers`.

The tokenizer follows GPT-2's design: text is split into bytes mapped to printable characters
(the ByteLevel pre-tokenizer), so every string round-trips exactly and no token is unknown.
`<|endoftext|>` has id 0 and is the BOS, EOS and padding token. Encoding adds no special
tokens, as with GPT-2. `vqkit.data.text.TextCorpus` inserts `<|endoftext|>` after every document.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import tokenizers
    from transformers import PreTrainedTokenizerFast

logger = logging.getLogger(__name__)

END_OF_TEXT = "<|endoftext|>"

# The 256 byte symbols of the ByteLevel alphabet plus END_OF_TEXT.
MIN_VOCAB_SIZE = 257

# A pair must occur at least this often in the training texts to be merged.
MIN_PAIR_FREQUENCY = 2


def train_bpe(texts: Iterable[str], vocab_size: int = 4096) -> tokenizers.Tokenizer:
    """Train a byte-level BPE `tokenizers.Tokenizer` with `vocab_size` tokens on `texts`.

    The vocabulary can be smaller than `vocab_size` when the texts contain too few pairs that
    occur `MIN_PAIR_FREQUENCY` times. The same texts give the same vocabulary and merges in
    every process: `tests/test_data_text.py` checks this with tokenizers 0.23, in one process
    and across two.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(
            f"vocab_size must be an integer of at least {MIN_VOCAB_SIZE} (256 bytes and {END_OF_TEXT}), "
            f"got {vocab_size!r}"
        )

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=MIN_PAIR_FREQUENCY,
        show_progress=False,
        special_tokens=[END_OF_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    if tokenizer.get_vocab_size() < vocab_size:
        logger.warning(
            "BPE training produced %d tokens of the %d requested: the training texts have too few repeated pairs",
            tokenizer.get_vocab_size(),
            vocab_size,
        )
    return tokenizer


def wrap_tokenizer(tokenizer: tokenizers.Tokenizer) -> PreTrainedTokenizerFast:
    """Wrap a tokenizer from `train_bpe` as a transformers tokenizer with `<|endoftext|>` as BOS, EOS and padding."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=END_OF_TEXT,
        eos_token=END_OF_TEXT,
        pad_token=END_OF_TEXT,
        unk_token=None,
        clean_up_tokenization_spaces=False,
    )


def train_tokenizer(texts: Iterable[str], vocab_size: int = 4096) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on `texts` and return it as a `transformers.PreTrainedTokenizerFast`.

    See `train_bpe` for the training and `wrap_tokenizer` for the special tokens.
    """
    return wrap_tokenizer(train_bpe(texts, vocab_size))


def encode_texts(
    tokenizer: PreTrainedTokenizerFast,
    texts: Sequence[str],
    batch_size: int = 64,
    progress: bool = True,
    description: str = "tokenize",
) -> list[list[int]]:
    """Encode each text to token ids, reading any `<|endoftext|>` inside a text as plain characters.

    A document that quotes the string `<|endoftext|>` would otherwise get the special token in
    its middle. `tokenizer` itself is not changed. A tqdm bar labelled `description` counts
    the texts when `progress`.
    """
    from tokenizers import Tokenizer
    from tqdm.auto import tqdm

    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.encode_special_tokens = True
    ids: list[list[int]] = []
    with tqdm(total=len(texts), desc=description, unit="doc", disable=not progress) as bar:
        for start in range(0, len(texts), batch_size):
            batch = list(texts[start : start + batch_size])
            ids.extend(encoding.ids for encoding in backend.encode_batch(batch, add_special_tokens=False))
            bar.update(len(batch))
    return ids
