"""English sentences for the synthesized speech corpus in `vqkit.data.speech`.

The sentences come from the reStructuredText sources of the Python documentation that the
Debian package `python3.11-doc` installs under `PYTHON_DOC_SOURCES`. Only plain prose is kept:
unindented paragraphs outside directives, split into sentences, each 4 to 20 words of letters,
apostrophes, hyphens and commas or semicolons, ending in `.`, `?` or `!`. Sentences with digits,
acronyms, CamelCase names, single letters or words without a vowel are dropped, because a TTS engine reads those in ways
that the lowercase transcript cannot match (numbers are spelled out, acronyms are spelled letter by
letter). When the folder is absent, `generated_sentences` builds sentences from a fixed
vocabulary instead.

Both sources are deterministic: the same files or the same seed give the same sentences in the
same order.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np

PYTHON_DOC_SOURCES = Path("/usr/share/doc/python3.11/html/_sources")
MIN_WORDS = 4
MAX_WORDS = 20

# One word: letters with inner apostrophes or hyphens, optionally followed by a comma or semicolon.
_WORD = re.compile(r"[A-Za-z]+(?:['\-][A-Za-z]+)*[,;]?")
_VOWEL = re.compile(r"[aeiouyAEIOUY]")
# Sentence boundary: end punctuation, whitespace, then a capital letter.
_SENTENCE_END = re.compile(r"(?<=[.?!])\s+(?=[A-Z])")
# First characters of lines that start reStructuredText markup rather than a prose paragraph:
# directives and comments (..), field lists (:), bullets (* - +), enumerations (#), line blocks
# (|), doctest prompts (>) and section adornments (= ~ ^ " ').
_MARKUP_START = tuple(".:*-+#|>=~^\"'`")


def _is_adornment(line: str) -> bool:
    stripped = line.strip()
    return len(stripped) >= 3 and len(set(stripped)) == 1 and not stripped[0].isalnum()


def _prose_paragraphs(text: str) -> Iterable[str]:
    """Yield the paragraphs of reStructuredText `text` that consist of unindented prose lines only."""
    block: list[str] = []
    for line in text.splitlines() + [""]:
        if line.strip():
            block.append(line)
            continue
        prose = all(not line[0].isspace() and not _is_adornment(line) for line in block)
        if block and prose and not block[0].startswith(_MARKUP_START):
            yield " ".join(line.strip() for line in block)
        block = []


def _is_plain_word(word: str, first: bool) -> bool:
    if not _WORD.fullmatch(word):
        return False
    letters = word.rstrip(",;")
    if len(letters) == 1:
        return letters in ("a", "I") or (first and letters == "A")
    # Words without a vowel are mostly code names (pdb, str) that the engines spell out.
    if not _VOWEL.search(letters):
        return False
    # Only the first letter may be upper case, which rejects acronyms and CamelCase names.
    return letters[1:] == letters[1:].lower()


def is_plain_sentence(sentence: str, min_words: int = MIN_WORDS, max_words: int = MAX_WORDS) -> bool:
    """Return whether `sentence` is plain English prose that a TTS engine reads as written."""
    if len(sentence) < 2 or sentence[-1] not in ".?!" or not sentence[0].isupper():
        return False
    words = sentence[:-1].split(" ")
    if not min_words <= len(words) <= max_words:
        return False
    if words[-1].endswith((",", ";")):
        return False
    return all(_is_plain_word(word, first=i == 0) for i, word in enumerate(words))


def normalize_transcript(sentence: str) -> str:
    """Return `sentence` as lowercase words separated by single spaces, for WER scoring.

    Hyphens become spaces and punctuation other than inner apostrophes is removed, so
    "Built-in types, mostly." becomes "built in types mostly".
    """
    text = sentence.lower().replace("-", " ")
    text = re.sub(r"[^a-z' ]", " ", text)
    words = [word.strip("'") for word in text.split()]
    return " ".join(word for word in words if word)


def python_doc_sentences(
    root: Path = PYTHON_DOC_SOURCES, min_words: int = MIN_WORDS, max_words: int = MAX_WORDS
) -> list[str]:
    """Extract the plain prose sentences of the `*.rst.txt` files under `root`.

    Files are read in sorted path order and each sentence is kept at its first occurrence, so
    the result depends only on the file contents. Returns an empty list when `root` is missing.
    """
    if not root.is_dir():
        return []
    sentences: dict[str, None] = {}
    for path in sorted(root.rglob("*.rst.txt")):
        text = path.read_text(encoding="utf-8", errors="replace")
        for paragraph in _prose_paragraphs(text):
            paragraph = re.sub(r"\s+", " ", paragraph)
            for sentence in _SENTENCE_END.split(paragraph):
                if is_plain_sentence(sentence, min_words, max_words):
                    sentences.setdefault(sentence, None)
    return list(sentences)


_SUBJECTS = (
    "the old farmer", "a young teacher", "my brother", "the small dog", "our neighbor",
    "the tired driver", "a quiet student", "her mother", "the red bird", "the busy doctor",
    "a tall sailor", "the city council", "his sister", "the baker", "a curious child",
)
_VERBS = (
    "carried", "painted", "found", "opened", "cleaned", "watched", "moved", "described",
    "followed", "repaired", "counted", "brought", "wanted", "measured", "forgot",
)
_OBJECTS = (
    "the wooden box", "a green bottle", "the heavy door", "seven yellow apples", "the long letter",
    "a broken chair", "the morning paper", "the blue boat", "a warm blanket", "the garden gate",
    "an empty basket", "the kitchen table", "a silver coin", "the narrow bridge", "the brown horse",
)
_ENDINGS = (
    "", "before dinner", "after the storm", "near the river", "in the evening", "without a word",
    "during the long winter", "at the station", "with great care", "for the first time",
    "under the old tree", "on a cold morning", "behind the house", "every single day",
)


def generated_sentences(
    count: int, seed: int = 0, min_words: int = MIN_WORDS, max_words: int = MAX_WORDS
) -> list[str]:
    """Return `count` distinct sentences of `min_words` to `max_words` words built from a fixed vocabulary.

    The vocabulary forms sentences of 6 to 11 words, in an order set by `seed`. Raises
    ValueError when fewer than `count` of them fit the word range.
    """
    if count <= 0:
        return []
    sizes = (len(_SUBJECTS), len(_VERBS), len(_OBJECTS), len(_ENDINGS))
    sentences = []
    for code in np.random.default_rng(seed).permutation(int(np.prod(sizes))).tolist():
        subject, verb, obj, ending = np.unravel_index(code, sizes)
        phrase = " ".join(part for part in (_SUBJECTS[subject], _VERBS[verb], _OBJECTS[obj], _ENDINGS[ending]) if part)
        if min_words <= len(phrase.split()) <= max_words:
            sentences.append(phrase[0].upper() + phrase[1:] + ".")
            if len(sentences) == count:
                return sentences
    raise ValueError(
        f"the generated vocabulary forms only {len(sentences)} distinct sentences of {min_words} to {max_words} "
        f"words, fewer than the {count} requested. Widen the word range or request fewer sentences."
    )
