"""Documents of the text corpus: Python's documentation, or the standard library's docstrings.

"python-docs" reads the reStructuredText sources that Debian's `python3.11-doc` package
installs under `PYTHON_DOCS_DIR` (about 500 files, 12 MB), one document per file. Install it
with `scripts/install-debian-packages`. "docstrings" needs no package: it imports the modules
named in `sys.stdlib_module_names` and collects their docstrings, one document per module.
Its text depends on the Python version and on which optional modules (tkinter, curses, ...)
import on the machine.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import logging
import re
import sys
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

SOURCES = ("auto", "python-docs", "docstrings")

PYTHON_DOCS_DIR = Path("/usr/share/doc/python3.11/html/_sources")
RST_SUFFIX = ".rst.txt"

# Standard library modules that the docstring source never imports: importing `antigravity`
# opens a web browser and importing `this` prints the Zen of Python.
SKIPPED_MODULES = frozenset({"antigravity", "this"})


@dataclass(frozen=True)
class Document:
    """A named text of the corpus. The name decides the document's split."""

    name: str
    text: str


def load_documents(source: str = "auto", max_document_chars: int | None = None) -> list[Document]:
    """Load the documents of `source`, sorted by name.

    `source` is "python-docs", "docstrings", or "auto", which picks "python-docs" when
    `PYTHON_DOCS_DIR` contains documentation and "docstrings" otherwise (see
    `resolve_source`). `max_document_chars` truncates every document to that many characters.
    """
    source = resolve_source(source)
    if source == "python-docs":
        documents = read_python_docs(PYTHON_DOCS_DIR)
    else:
        documents = collect_docstrings(stdlib_module_names())

    if max_document_chars is not None:
        if isinstance(max_document_chars, bool) or not isinstance(max_document_chars, int) or max_document_chars < 1:
            raise ValueError(f"max_document_chars must be a positive integer or None, got {max_document_chars!r}")
        documents = [Document(doc.name, doc.text[:max_document_chars]) for doc in documents]

    documents.sort(key=lambda doc: doc.name)
    logger.info(
        "Loaded %d documents (%d characters) from source %r",
        len(documents),
        sum(len(doc.text) for doc in documents),
        source,
    )
    return documents


def resolve_source(source: str) -> str:
    """Return "python-docs" or "docstrings" for `source`, choosing one when it is "auto"."""
    if source not in SOURCES:
        raise ValueError(f"unknown text source {source!r}: choose one of {', '.join(SOURCES)}")
    has_docs = PYTHON_DOCS_DIR.is_dir() and any(PYTHON_DOCS_DIR.rglob(f"*{RST_SUFFIX}"))
    if source == "python-docs" and not has_docs:
        raise FileNotFoundError(
            f"Python documentation sources not found in {PYTHON_DOCS_DIR}: install the Debian package "
            "python3.11-doc (scripts/install-debian-packages does), or use source 'docstrings'"
        )
    if source != "auto":
        return source
    if has_docs:
        logger.info("Text source: Python documentation in %s", PYTHON_DOCS_DIR)
        return "python-docs"
    logger.warning(
        "Python documentation sources not found in %s (Debian package python3.11-doc), "
        "so the text corpus falls back to standard library docstrings",
        PYTHON_DOCS_DIR,
    )
    return "docstrings"


# ---- python-docs --------------------------------------------------------------------------------


def read_python_docs(folder: Path) -> list[Document]:
    """Read every `*.rst.txt` file under `folder` as a document named by its relative path, without the suffix."""
    documents = []
    for path in sorted(folder.rglob(f"*{RST_SUFFIX}")):
        name = path.relative_to(folder).as_posix()[: -len(RST_SUFFIX)]
        text = clean_rst(path.read_text(encoding="utf-8"))
        if text:
            documents.append(Document(name, text))
    return documents


# Directives whose whole block is markup for Sphinx (index entries, authors, the code-highlighting
# language, the table of contents, doctest setup) rather than text shown to a reader.
_DROPPED_DIRECTIVES = ("index", "moduleauthor", "sectionauthor", "highlight", "toctree", "testsetup", "testcleanup")
# A comment is ".." followed by anything but a directive ("name::"), a footnote ("[") or a
# substitution ("|"), and a hyperlink target is ".. _name:".
_DROPPED_BLOCK = re.compile(
    r"^(?P<indent>[ \t]*)\.\.(?:[ \t]*$|[ \t]+(?:(?:"
    + "|".join(_DROPPED_DIRECTIVES)
    + r")::|_[^:]*:|(?![\w:-]+::|\[|\|)))"
)
# An inline role such as :func:`os.path.join`, :ref:`title <label>` or :c:func:`PyList_New`.
_ROLE = re.compile(r":(?P<role>(?:[\w-]+:)*[\w-]+):`(?P<content>[^`]+)`")
_TITLE_AND_TARGET = re.compile(r"^(.*?)\s*<[^<>]+>$", re.DOTALL)
# Roles whose text is literal, so "<name>" in it is a placeholder rather than a link target.
_LITERAL_ROLES = frozenset({"samp", "file", "kbd", "program", "envvar", "makevar"})


def clean_rst(text: str) -> str:
    """Remove Sphinx markup that a reader of the rendered page does not see, keeping prose and code.

    Drops index entries, author lines, hyperlink targets, comments and toctrees with their
    indented blocks, and replaces inline roles by their text (":func:`~os.path.join`" becomes
    "join"). Headings, directives such as `.. function::` and code blocks stay as they are.
    """
    kept_lines = []
    dropped_indent: int | None = None
    for line in text.splitlines():
        if dropped_indent is not None:
            indent = len(line) - len(line.lstrip())
            if not line.strip() or indent > dropped_indent:
                continue
            dropped_indent = None
        match = _DROPPED_BLOCK.match(line)
        if match:
            dropped_indent = len(match.group("indent"))
            continue
        kept_lines.append(line.rstrip())
    # Roles are replaced in the joined text because a role's text may wrap onto the next line.
    text = _ROLE.sub(_role_text, "\n".join(kept_lines))
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


def _role_text(match: re.Match[str]) -> str:
    role = match.group("role")
    content = match.group("content")
    titled = None if role in _LITERAL_ROLES else _TITLE_AND_TARGET.match(content)
    if titled and titled.group(1):
        return titled.group(1)
    content = content.lstrip("!")
    if content.startswith("~"):
        content = content[1:].rsplit(".", 1)[-1]
    if role in ("pep", "rfc"):
        # Sphinx renders :pep:`8` as "PEP 8".
        return f"{role.upper()} {content.split('#', 1)[0]}"
    return content


# ---- docstrings ---------------------------------------------------------------------------------


def stdlib_module_names() -> list[str]:
    """Return the public top-level standard library modules the docstring source imports, sorted."""
    return sorted(name for name in sys.stdlib_module_names if not name.startswith("_") and name not in SKIPPED_MODULES)


def collect_docstrings(module_names: Iterable[str]) -> list[Document]:
    """Build one document per importable module: its docstring, then those of its public classes, methods and functions.

    Modules that fail to import are skipped and counted in the log. Importing leaves them in
    `sys.modules`, and their output and warnings during import are discarded. A class or
    function re-exported by several modules is documented in the first one, in name order.
    """
    documents = []
    skipped = []
    seen: set[int] = set()
    for name in sorted(module_names):
        module = _import_quietly(name)
        if module is None:
            skipped.append(name)
            continue
        text = _module_text(module, seen)
        if text:
            documents.append(Document(name, text))
    if skipped:
        logger.info("Skipped %d standard library modules that failed to import: %s", len(skipped), ", ".join(skipped))
    return documents


def _import_quietly(name: str):
    discarded = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(discarded), contextlib.redirect_stderr(discarded):
        warnings.simplefilter("ignore")
        try:
            return importlib.import_module(name)
        # Any module-level code can fail on import, with any exception.
        except (Exception, SystemExit) as error:  # noqa: BLE001
            logger.debug("Skipping module %s: %s: %s", name, type(error).__name__, error)
            return None


def _module_text(module, seen: set[int]) -> str:
    parts = []
    module_doc = inspect.getdoc(module)
    if module_doc:
        parts.append(f"{module.__name__}\n{'=' * len(module.__name__)}\n\n{module_doc}")

    for attribute in sorted(vars(module)):
        obj = vars(module)[attribute]
        if attribute.startswith("_") or not _defined_in(obj, module.__name__) or id(obj) in seen:
            continue
        seen.add(id(obj))
        parts.extend(_documented_members(f"{module.__name__}.{attribute}", obj))
    return "\n\n".join(parts) + "\n" if parts else ""


def _defined_in(obj, module_name: str) -> bool:
    if not (inspect.isclass(obj) or inspect.isroutine(obj)):
        return False
    defining_module = getattr(obj, "__module__", None) or ""
    return defining_module == module_name or defining_module.startswith(module_name + ".")


def _documented_members(qualified_name: str, obj) -> list[str]:
    """Return "name(signature)" headed docstrings of `obj` and, for a class, of its public methods."""
    parts = []
    doc = inspect.getdoc(obj)
    if doc:
        parts.append(f"{qualified_name}{_signature(obj)}\n\n{doc}")
    if inspect.isclass(obj):
        for attribute in sorted(vars(obj)):
            member = vars(obj)[attribute]
            if attribute.startswith("_") or not inspect.isroutine(member):
                continue
            member_doc = inspect.getdoc(member)
            if member_doc:
                parts.append(f"{qualified_name}.{attribute}{_signature(member)}\n\n{member_doc}")
    return parts


# The " at 0x7f..." in default values such as "<object object at 0x7f...>", which changes
# from run to run and would make the corpus differ between runs.
_MEMORY_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _signature(obj) -> str:
    try:
        signature = str(inspect.signature(obj))
    except (TypeError, ValueError):
        return ""
    return _MEMORY_ADDRESS.sub("", signature)
