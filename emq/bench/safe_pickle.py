"""Read pickles that hold only plain data, refusing anything that could run code.

Public ground-truth files (EMQ's `PTQ-GT.pkl`) are pickles, and `pickle.load` on an
untrusted file can call any importable function. `load_plain_pickle` uses an
unpickler whose `find_class` refuses *every* global, so no class, function or
reducer is ever looked up, let alone called; persistent ids and the copyreg
extension registry are refused as well. What pickle can encode without globals —
dict, list, tuple, str, int, float, bool, None (and bytes / sets, which are
rejected afterwards) — loads normally.

`load_record_pickle` is the one widening: a file written with a few known classes
(e.g. analog-nasbench's `Architecture`) loads when the caller maps exactly those
(module, name) pairs to `PickledRecord` subclasses of its own. Such a class only
stores the state dict that the pickle's BUILD hands it; its constructor takes no
arguments, so a REDUCE on it cannot pass any, and every other global is refused.
"""
from __future__ import annotations

import io
import pickle
import re
from pathlib import Path
from typing import Any, BinaryIO, Mapping

from emq.errors import EMQUserError

#: The only types a plain-data pickle may contain.
PLAIN_TYPES = (dict, list, tuple, str, int, float, bool, type(None))


class UnsafePickleError(EMQUserError, pickle.UnpicklingError):
    """The pickle references code (a global, a persistent id) or holds a non-plain value."""


class PlainDataUnpickler(pickle.Unpickler):
    """An unpickler that refuses every global: only plain containers and scalars load."""

    def __init__(self, file: BinaryIO, source: str = "<pickle>") -> None:
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        raise UnsafePickleError(
            f"{self.source}: refusing to load the global {module}.{name}: this reader accepts only plain data "
            f"(dict, list, tuple, str, int, float, bool, None), never classes or functions, so nothing in the "
            f"file is executed. If the file is trusted, convert it to JSON (same content) and load that instead."
        )

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self.source}: refusing a persistent id; only plain data is accepted")


class PickledRecord:
    """A plain record standing in for a pickled class: it keeps BUILD's state dict in `fields`, nothing more.

    Subclasses must declare `__slots__ = ()` so that no attribute but `fields` exists.
    """

    __slots__ = ("fields",)

    def __init__(self) -> None:
        self.fields: dict[str, Any] = {}

    def __setstate__(self, state: Any) -> None:
        # A TypeError here becomes the loader's one-line "not a readable pickle" error.
        if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
            raise TypeError(f"the state of a {type(self).__name__} must be a dict with string keys, "
                            f"got {type(state).__name__}")
        self.fields = dict(state)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({getattr(self, 'fields', {})!r})"


RecordClasses = Mapping[tuple[str, str], type[PickledRecord]]


class RecordUnpickler(PlainDataUnpickler):
    """An unpickler that maps exactly the given (module, name) globals to PickledRecord classes and refuses the rest."""

    def __init__(self, file: BinaryIO, source: str, classes: RecordClasses) -> None:
        super().__init__(file, source)
        self.classes = dict(classes)

    def find_class(self, module: str, name: str) -> Any:
        cls = self.classes.get((module, name))
        if cls is None:
            known = ", ".join(f"{m}.{n}" for m, n in self.classes)
            raise UnsafePickleError(f"{self.source}: refusing to load the global {module}.{name}: only {known} "
                                    f"are accepted (read as plain records), so nothing in the file is executed")
        return cls


def load_plain_pickle(source: str | Path | bytes | BinaryIO) -> Any:
    """Return the plain-data content of a pickle (path, bytes or binary file), refusing any global.

    Raises `UnsafePickleError` for globals / persistent ids / non-plain values, and
    `ValueError` naming the source for a truncated or corrupt file.
    """
    if isinstance(source, (str, Path)):
        name = str(source)
        with open(source, "rb") as f:
            return _load(f, name)
    if isinstance(source, (bytes, bytearray)):
        return _load(io.BytesIO(bytes(source)), "<bytes>")
    return _load(source, getattr(source, "name", "<pickle>"))


def load_record_pickle(path: str | Path, classes: RecordClasses) -> Any:
    """Return the content of a pickle file whose only globals are the keys of `classes`, loaded as those records.

    Plain data loads as in `load_plain_pickle`; each mapped global becomes its
    PickledRecord class (`fields` = the pickled state). Raises `UnsafePickleError`
    naming the file and the global for anything else, and `ValueError` naming the
    file for a truncated or corrupt one.
    """
    for cls in classes.values():
        if not (isinstance(cls, type) and issubclass(cls, PickledRecord)):
            raise TypeError(f"record classes must subclass PickledRecord, got {cls!r}")
    with open(path, "rb") as f:
        return _load(f, str(path), classes)


def _load(f: BinaryIO, name: str, classes: RecordClasses | None = None) -> Any:
    try:
        reader = PlainDataUnpickler(f, name) if classes is None else RecordUnpickler(f, name, classes)
        obj = reader.load()
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError,
            AttributeError, MemoryError, UnicodeDecodeError, OverflowError) as exc:
        raise ValueError(f"{name}: not a readable pickle ({type(exc).__name__}: {exc})") from exc
    records = tuple(classes.values()) if classes is not None else ()
    _check_plain(obj, name, "top level", records)
    return obj


def _check_plain(obj: Any, name: str, where: str, records: tuple[type, ...] = ()) -> None:
    """Fail if anything inside `obj` is not one of PLAIN_TYPES or `records` (iteratively: deep nesting is fine)."""
    stack: list[tuple[Any, str]] = [(obj, where)]
    seen: set[int] = set()  # pickle's memo can make a container hold itself: visit each one once
    while stack:
        value, at = stack.pop()
        if isinstance(value, (dict, list, tuple, PickledRecord)):
            if id(value) in seen:
                continue
            seen.add(id(value))
        if type(value) in records:
            stack.append((getattr(value, "fields", {}), f"{at}.fields"))
            continue
        if type(value) not in PLAIN_TYPES:
            raise UnsafePickleError(f"{name}: {at} holds a {type(value).__name__}; only plain data "
                                    f"(dict, list, tuple, str, int, float, bool, None) is accepted")
        if isinstance(value, dict):
            for k, v in value.items():
                stack.append((k, f"a key in {at}"))
                stack.append((v, f"{at}[{k!r}]"))
        elif isinstance(value, (list, tuple)):
            stack.extend((v, f"{at}[{i}]") for i, v in enumerate(value))


def describe_torch_load_error(exc: BaseException) -> str:
    """Return one line saying why `torch.load(..., weights_only=True)` refused or failed to read a file.

    A refused global is named (the file tried to reference code; nothing was run).
    torch's own message is not passed on: it is many lines long and its first
    advice is to re-run with `weights_only=False`, the unsafe option.
    """
    text = str(exc)
    refused = re.search(r"GLOBAL ([\w.]+)", text)
    if refused:
        return (f"refused the global {refused.group(1)}: the file must hold only plain data (lists, dicts, "
                "numbers, strings, tensors), and nothing in it was run")
    detail = re.search(r"WeightsUnpickler error: ([^\n]*)", text)
    if detail:
        return detail.group(1).strip()[:200]
    lines = [line.strip() for line in text.splitlines() if line.strip() and "weights_only" not in line]
    return lines[0][:200] if lines else f"{type(exc).__name__} (the file is empty or truncated)"
