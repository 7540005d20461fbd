"""Text corpus: documents, splits, the BPE tokenizer, the token cache and token windows.

Most tests read a folder of generated reStructuredText files in place of the python3.11-doc
sources, so they run the same with or without that Debian package and train on a few KB.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vqkit.data import text, text_documents
from vqkit.data.common import DEFAULT_LENGTH
from vqkit.data.text import (
    SPLITS,
    Document,
    TextCorpus,
    TokenWindows,
    default_cache_dir,
    document_split,
    load_documents,
    split_documents,
    train_tokenizer,
)
from vqkit.data.text_documents import clean_rst, collect_docstrings
from vqkit.data.text_tokenizer import END_OF_TEXT, train_bpe

REAL_PYTHON_DOCS_DIR = text_documents.PYTHON_DOCS_DIR
NUM_GENERATED_DOCUMENTS = 60
TINY_VOCAB = 300

WORDS = (
    "the module returns a list of values for each key and raises ValueError when the input is invalid "
    "buffer socket thread encoding decoder iterator generator context manager attribute method "
    "naïve café Grüße déjà-vu 日本語 テキスト Ελληνικά emoji 🐍"
).split()


def _generated_rst(index: int) -> str:
    rng = random.Random(index)
    paragraphs = [" ".join(rng.choice(WORDS) for _ in range(60)) for _ in range(3)]
    return (
        f":mod:`topic{index}` --- generated page\n"
        "===========================\n\n"
        ".. index:: single: topic; generated\n\n"
        f"{paragraphs[0]}\n\nSee :func:`~os.path.join` and :ref:`the tutorial <tut-index>`.\n\n"
        "Example::\n\n"
        f"    >>> values = [{index}, {index + 1}]\n"
        "    >>> print(sum(values))\n\n"
        f"{paragraphs[1]}\n\n.. note::\n\n   {paragraphs[2]}\n"
    )


@pytest.fixture(scope="module")
def docs_dir(tmp_path_factory) -> Path:
    """A folder laid out like the python3.11-doc sources, with generated pages."""
    folder = tmp_path_factory.mktemp("python-docs") / "_sources"
    (folder / "library").mkdir(parents=True)
    for index in range(NUM_GENERATED_DOCUMENTS):
        (folder / "library" / f"topic{index:02d}.rst.txt").write_text(_generated_rst(index), encoding="utf-8")
    # A page that quotes the special token, which must stay plain text in the corpus tokens.
    (folder / "library" / "topic01.rst.txt").write_text(
        _generated_rst(1) + "\nGPT-2 separates documents with <|endoftext|> in its training data.\n",
        encoding="utf-8",
    )
    (folder / "library" / "not-a-source.txt").write_text("ignored", encoding="utf-8")
    return folder


@pytest.fixture(autouse=True)
def generated_docs(docs_dir, monkeypatch):
    monkeypatch.setattr(text_documents, "PYTHON_DOCS_DIR", docs_dir)
    return docs_dir


@pytest.fixture(scope="module")
def tiny_corpus(docs_dir, tmp_path_factory) -> TextCorpus:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(text_documents, "PYTHON_DOCS_DIR", docs_dir)
        return TextCorpus.load(
            vocab_size=TINY_VOCAB, cache_dir=tmp_path_factory.mktemp("cache"), progress=False
        )


# ---- documents ----------------------------------------------------------------------------------


def test_clean_rst_drops_markup_and_keeps_code():
    source = (
        ".. _json-intro:\n\n"
        "Title\n=====\n\n"
        ".. index::\n   single: JSON\n   pair: module; json\n\n"
        ".. moduleauthor:: Someone <someone@example.org>\n"
        ".. a comment\n   that continues\n\n"
        "Use :func:`~os.path.join`, :class:`!Path`, :ref:`the guide <guide>` and\n"
        ":ref:`a wrapped\n   title <label>`, see :pep:`8` and :samp:`{<venv>}/bin`.\n\n"
        "Example::\n\n    >>> import json\n    >>> json.dumps([1])\n    '[1]'\n\n"
        ".. c:function:: int PyList_Check(PyObject *p)\n\n   Return true.\n\n"
        ".. [#f1] A footnote.\n"
    )

    cleaned = clean_rst(source)

    assert cleaned.startswith("Title\n=====\n")
    assert "index::" not in cleaned
    assert "single: JSON" not in cleaned
    assert "someone@example.org" not in cleaned
    assert "a comment" not in cleaned
    assert "that continues" not in cleaned
    assert "_json-intro" not in cleaned
    assert "Use join, Path, the guide and\na wrapped\n   title, see PEP 8 and {<venv>}/bin." in cleaned
    assert "    >>> import json\n    >>> json.dumps([1])\n    '[1]'" in cleaned
    assert ".. c:function:: int PyList_Check(PyObject *p)\n\n   Return true." in cleaned
    assert ".. [#f1] A footnote." in cleaned


def test_load_documents_reads_rst_sources(generated_docs):
    documents = load_documents("python-docs")

    names = [doc.name for doc in documents]
    assert names == sorted(names)
    assert len(names) == NUM_GENERATED_DOCUMENTS
    assert "library/topic07" in names
    assert "library/not-a-source" not in names
    topic = documents[names.index("library/topic07")]
    assert ">>> values = [7, 8]" in topic.text
    assert ":func:" not in topic.text
    assert "index::" not in topic.text


def test_load_documents_truncates():
    documents = load_documents("python-docs", max_document_chars=50)

    assert all(len(doc.text) <= 50 for doc in documents)
    with pytest.raises(ValueError, match="max_document_chars"):
        load_documents("python-docs", max_document_chars=0)


def test_load_documents_rejects_unknown_source():
    with pytest.raises(ValueError, match="'wiki'.*auto, python-docs, docstrings"):
        load_documents("wiki")


def test_explicit_python_docs_missing_raises(monkeypatch, tmp_path):
    monkeypatch.setattr(text_documents, "PYTHON_DOCS_DIR", tmp_path / "missing")

    with pytest.raises(FileNotFoundError, match="python3.11-doc"):
        load_documents("python-docs")


def test_docstring_fallback(monkeypatch, tmp_path, caplog):
    monkeypatch.setattr(text_documents, "PYTHON_DOCS_DIR", tmp_path / "missing")
    monkeypatch.setattr(
        text_documents, "stdlib_module_names", lambda: ["textwrap", "json", "configparser", "no_such_module_xyz"]
    )

    with caplog.at_level(logging.INFO, logger="vqkit.data.text_documents"):
        documents = load_documents("auto")

    assert [doc.name for doc in documents] == ["configparser", "json", "textwrap"]
    json_doc = documents[1].text
    assert json_doc.startswith("json\n====\n")
    assert "json.dumps(obj, *, skipkeys=False" in json_doc
    assert "Serialize ``obj`` to a JSON formatted ``str``" in json_doc
    # configparser's signatures have sentinel defaults whose repr contains a memory address.
    assert " at 0x" not in documents[0].text
    assert "falls back to standard library docstrings" in caplog.text
    assert "no_such_module_xyz" in caplog.text


def test_stdlib_module_names_skip_side_effects():
    names = text_documents.stdlib_module_names()

    assert "json" in names
    assert "antigravity" not in names
    assert "this" not in names
    assert not [name for name in names if name.startswith("_")]
    assert names == sorted(names)


@pytest.mark.skipif(not REAL_PYTHON_DOCS_DIR.is_dir(), reason="Debian package python3.11-doc is not installed")
def test_real_python_docs_split_sizes():
    documents = text_documents.read_python_docs(REAL_PYTHON_DOCS_DIR)
    splits = split_documents(documents)

    assert len(documents) > 400
    json_page = next(doc for doc in documents if doc.name == "library/json")
    assert ">>> json.dumps(['foo', {'bar': ('baz', None, 1.0, 2)}])" in json_page.text
    assert ".. index::" not in json_page.text
    assert 0.85 < len(splits["train"]) / len(documents) < 0.95
    assert len(splits["validation"]) >= 10
    assert len(splits["test"]) >= 10


# ---- splits -------------------------------------------------------------------------------------


def test_document_split_is_stable():
    # Fixed by SHA-1 of the name, so these must never change between versions.
    assert document_split("library/json") == "train"
    assert document_split("library/ast") == "validation"
    assert document_split("library/asyncio-dev") == "test"
    assert document_split("c-api/bytes") == "test"


def test_split_documents_disjoint_and_deterministic():
    documents = [Document(f"page{index}", "") for index in range(2000)]
    shuffled = list(documents)
    random.Random(0).shuffle(shuffled)

    splits = split_documents(documents)

    assert list(splits) == list(SPLITS)
    assert split_documents(shuffled) == splits
    names = {split: {doc.name for doc in members} for split, members in splits.items()}
    assert names["train"].isdisjoint(names["validation"])
    assert names["train"].isdisjoint(names["test"])
    assert names["validation"].isdisjoint(names["test"])
    assert set().union(*names.values()) == {doc.name for doc in documents}
    assert 0.88 < len(splits["train"]) / 2000 < 0.92
    assert 0.03 < len(splits["validation"]) / 2000 < 0.07
    assert 0.03 < len(splits["test"]) / 2000 < 0.07
    for members in splits.values():
        assert [doc.name for doc in members] == sorted(doc.name for doc in members)


def test_split_limit_keeps_split_membership():
    documents = [Document(f"page{index}", "") for index in range(300)]
    full = split_documents(documents)

    limited = split_documents(documents, max_documents_per_split=4)

    for split in SPLITS:
        assert len(limited[split]) == 4
        assert set(limited[split]) <= set(full[split])
    with pytest.raises(ValueError, match="max_documents_per_split"):
        split_documents(documents, max_documents_per_split=0)


# ---- tokenizer ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_tokenizer():
    return train_tokenizer([_generated_rst(index) for index in range(20)], vocab_size=TINY_VOCAB)


@pytest.mark.parametrize(
    "sample",
    [
        "def f(x):\n    return x + 1\n",
        "  leading spaces, trailing tab\t",
        "Grüße, naïve café — 日本語のテキスト 🐍🐍 e\u0301",
        "",
        "\x00\x7f control bytes",
    ],
)
def test_tokenizer_round_trips(tiny_tokenizer, sample):
    ids = tiny_tokenizer.encode(sample)

    assert tiny_tokenizer.decode(ids) == sample


def test_tokenizer_special_tokens(tiny_tokenizer):
    assert len(tiny_tokenizer) == TINY_VOCAB
    assert tiny_tokenizer.bos_token == END_OF_TEXT
    assert tiny_tokenizer.eos_token == END_OF_TEXT
    assert tiny_tokenizer.pad_token == END_OF_TEXT
    assert tiny_tokenizer.eos_token_id == 0
    assert tiny_tokenizer.encode("a b") == tiny_tokenizer.encode("a b", add_special_tokens=False)


def test_tokenizer_is_deterministic(tiny_tokenizer):
    texts = [_generated_rst(index) for index in range(20)]

    again = train_tokenizer(texts, vocab_size=TINY_VOCAB)

    assert again.backend_tokenizer.to_str() == tiny_tokenizer.backend_tokenizer.to_str()


def test_tokenizer_and_docstrings_same_in_new_process():
    # Rust's HashMap seeds and Python object addresses differ between processes, so compare two.
    script = (
        "import hashlib, random, sys\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "from test_data_text import _generated_rst\n"
        "from vqkit.data.text_documents import collect_docstrings\n"
        "from vqkit.data.text_tokenizer import train_bpe\n"
        "bpe = train_bpe([_generated_rst(i) for i in range(20)], 300).to_str()\n"
        "docs = ''.join(d.name + d.text for d in collect_docstrings(['configparser', 'difflib']))\n"
        "print(hashlib.sha1(bpe.encode()).hexdigest(), hashlib.sha1(docs.encode()).hexdigest())\n"
    )
    bpe = train_bpe([_generated_rst(index) for index in range(20)], TINY_VOCAB).to_str()
    docs = "".join(doc.name + doc.text for doc in collect_docstrings(["configparser", "difflib"]))
    expected = [hashlib.sha1(bpe.encode()).hexdigest(), hashlib.sha1(docs.encode()).hexdigest()]

    result = subprocess.run(
        [sys.executable, "-c", script, str(Path(__file__).parent)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )

    assert result.stdout.split() == expected


def test_train_tokenizer_rejects_small_vocab():
    with pytest.raises(ValueError, match="at least 257"):
        train_tokenizer(["abc"], vocab_size=100)


# ---- corpus cache -------------------------------------------------------------------------------


def test_corpus_tokens_match_documents(tiny_corpus):
    tokenizer = tiny_corpus.tokenizer
    end_of_text = tokenizer.eos_token_id
    documents = {doc.name: doc for doc in load_documents("python-docs")}

    for split in SPLITS:
        names = tiny_corpus.document_names(split)
        expected = []
        for name in names:
            expected += tokenizer.encode(documents[name].text, split_special_tokens=True) + [end_of_text]
        tokens = tiny_corpus.tokens(split)
        assert names
        assert tokens.dtype == torch.long
        assert tokens.tolist() == expected
        assert int((tokens == end_of_text).sum()) == len(names)
        assert tiny_corpus.num_tokens(split) == len(expected)


def test_corpus_splits_match_document_split(tiny_corpus):
    for split in SPLITS:
        assert all(document_split(name) == split for name in tiny_corpus.document_names(split))
    assert sum(tiny_corpus.stats()[split]["num_documents"] for split in SPLITS) == NUM_GENERATED_DOCUMENTS
    assert tiny_corpus.source == "python-docs"
    assert "library/topic01" in tiny_corpus.document_names("train")


def test_corpus_cache_is_reused(tiny_corpus, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the tokenizer was trained again")

    monkeypatch.setattr(text, "train_tokenizer", fail)
    tokens_file = tiny_corpus.folder / text.TOKENS_FILE
    mtime = tokens_file.stat().st_mtime_ns

    again = TextCorpus.load(vocab_size=TINY_VOCAB, cache_dir=tiny_corpus.folder.parent.parent, progress=False)

    assert again.folder == tiny_corpus.folder
    assert tokens_file.stat().st_mtime_ns == mtime
    assert torch.equal(again.tokens("train"), tiny_corpus.tokens("train"))


def test_corpus_cache_layout(tiny_corpus):
    folder = tiny_corpus.folder
    files = sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file())
    umask = os.umask(0)
    os.umask(umask)

    assert folder.name.startswith(f"python-docs-vocab{TINY_VOCAB}-")
    assert "tokenizer/tokenizer.json" in files
    assert "tokens.safetensors" in files
    assert "corpus.json" in files
    assert not [name for name in files if name.endswith((".bin", ".pt", ".pkl", ".pickle"))]
    assert (folder / "tokens.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask
    assert [path.name for path in folder.parent.iterdir()] == [folder.name]
    metadata = json.loads((folder / "corpus.json").read_text(encoding="utf-8"))
    assert metadata["vocab_size"] == TINY_VOCAB


def test_corpus_changed_document_rebuilds(generated_docs, tmp_path, monkeypatch):
    changed_docs = tmp_path / "_sources"
    (changed_docs / "library").mkdir(parents=True)
    for path in sorted((generated_docs / "library").glob("topic0*.rst.txt")):
        (changed_docs / "library" / path.name).write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    monkeypatch.setattr(text_documents, "PYTHON_DOCS_DIR", changed_docs)
    first = TextCorpus.load(vocab_size=TINY_VOCAB, cache_dir=tmp_path / "cache", progress=False)

    page = changed_docs / "library" / "topic03.rst.txt"
    page.write_text(page.read_text(encoding="utf-8") + "\nOne more sentence.\n", encoding="utf-8")
    second = TextCorpus.load(vocab_size=TINY_VOCAB, cache_dir=tmp_path / "cache", progress=False)

    assert second.folder != first.folder
    assert first.folder.is_dir()


def test_corpus_unreadable_cache_rebuilds(tiny_corpus, tmp_path, caplog):
    cache = tmp_path / "cache"
    corpus = TextCorpus.load(vocab_size=TINY_VOCAB, cache_dir=cache, progress=False)
    (corpus.folder / text.TOKENS_FILE).write_bytes(b"not safetensors")

    with caplog.at_level(logging.WARNING, logger="vqkit.data.text"):
        rebuilt = TextCorpus.load(vocab_size=TINY_VOCAB, cache_dir=cache, progress=False)

    assert "cannot be read" in caplog.text
    assert torch.equal(rebuilt.tokens("train"), tiny_corpus.tokens("train"))
    assert [path.name for path in rebuilt.folder.parent.iterdir()] == [rebuilt.folder.name]


def test_corpus_docstring_fallback(monkeypatch, tmp_path):
    monkeypatch.setattr(text_documents, "PYTHON_DOCS_DIR", tmp_path / "missing")
    modules = ["argparse", "base64", "calendar", "json", "shlex", "string", "textwrap", "uuid"]
    monkeypatch.setattr(text_documents, "stdlib_module_names", lambda: modules)

    corpus = TextCorpus.load(vocab_size=TINY_VOCAB, cache_dir=tmp_path / "cache", progress=False)

    assert corpus.source == "docstrings"
    assert corpus.folder.name.startswith(f"docstrings-vocab{TINY_VOCAB}-")
    names = [name for split in SPLITS for name in corpus.document_names(split)]
    assert sorted(names) == modules
    assert corpus.num_tokens("train") > 1000


def test_corpus_unknown_split_raises(tiny_corpus):
    with pytest.raises(ValueError, match="'valid'.*train, validation, test"):
        tiny_corpus.tokens("valid")
    with pytest.raises(ValueError, match="'dev'"):
        tiny_corpus.windows("dev", seq_len=8)


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("VQKIT_CACHE_DIR", str(tmp_path / "vqkit-cache"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "vqkit-cache"

    monkeypatch.delenv("VQKIT_CACHE_DIR")
    assert default_cache_dir() == tmp_path / "xdg" / "vqkit"

    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "vqkit"


# ---- token windows ------------------------------------------------------------------------------


def test_random_windows_shape_and_bounds(tiny_corpus):
    tokens = tiny_corpus.tokens("train")
    windows = tiny_corpus.windows("train", seq_len=32, seed=3)

    assert len(windows) == DEFAULT_LENGTH
    offsets = [windows.window_offset(index) for index in range(200)]
    assert min(offsets) >= 0
    assert max(offsets) <= tokens.numel() - 32 - 1
    assert len(set(offsets)) > 100
    for index in range(20):
        window = windows[index]
        assert window.shape == (32,)
        assert window.dtype == torch.long
        assert torch.equal(window, tokens[offsets[index] : offsets[index] + 32])
    assert torch.equal(TokenWindows(tokens, 32, seed=3)[5], windows[5])
    assert not torch.equal(TokenWindows(tokens, 32, seed=4)[5], windows[5])


def test_window_is_a_copy(tiny_corpus):
    windows = tiny_corpus.windows("train", seq_len=8, mode="sequential")
    before = tiny_corpus.tokens("train")[:8].clone()

    windows[0].fill_(-1)

    assert torch.equal(tiny_corpus.tokens("train")[:8], before)


def test_sequential_windows_cover_without_overlap():
    tokens = torch.arange(101)
    windows = TokenWindows(tokens, seq_len=10, mode="sequential")

    assert len(windows) == 10
    assert torch.equal(torch.cat([windows[index] for index in range(len(windows))]), torch.arange(100))
    assert len(TokenWindows(torch.arange(100), seq_len=10, mode="sequential")) == 9
    with pytest.raises(IndexError):
        windows[10]


def test_windows_reject_short_split(tiny_corpus):
    num_tokens = tiny_corpus.num_tokens("test")

    with pytest.raises(ValueError, match=rf"split 'test' has {num_tokens} tokens, fewer than seq_len \+ 1"):
        tiny_corpus.windows("test", seq_len=num_tokens)
    assert len(tiny_corpus.windows("test", seq_len=num_tokens - 1, mode="sequential")) == 1


def test_windows_reject_invalid_arguments():
    tokens = torch.arange(50)

    with pytest.raises(ValueError, match="'shuffled'"):
        TokenWindows(tokens, 8, mode="shuffled")
    with pytest.raises(ValueError, match="seq_len"):
        TokenWindows(tokens, 0)
    with pytest.raises(ValueError, match="length applies to random windows only"):
        TokenWindows(tokens, 8, mode="sequential", length=3)
    with pytest.raises(ValueError, match="1-D integer tensor"):
        TokenWindows(tokens.float(), 8)
    assert len(TokenWindows(tokens, 8, length=7)) == 7
