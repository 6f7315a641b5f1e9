"""The argument manifest's format, and the check that every field of one is well-formed.

A manifest arrives from a blob store: a worker must refuse a malformed one with
an error naming the field (never an ``IndexError``, a ``RecursionError`` or a
raw torch error from deep inside the decoder), before any tensor is built.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import torch

from helion_remote.blobs import _DIGEST_RE
from helion_remote.errors import ConfigurationError

FORMAT = "helion-remote-args/1"


class ArgsFormatError(ConfigurationError):
    """A blob that is not an args manifest this version understands."""


MAX_DEPTH = 64
"""Deepest container nesting the codec ships: deeper trees are refused when
encoded, and a manifest that claims more is malformed (not a RecursionError)."""

_INT64_MAX = (1 << 63) - 1
_FLOAT_WORDS = ("inf", "-inf", "nan")
_QUANTIZED = {getattr(torch, n) for n in ("qint8", "quint8", "qint32", "quint4x2", "quint2x4") if hasattr(torch, n)}


def load_manifest(manifest: bytes | str | Mapping[str, Any]) -> dict[str, Any]:
    """Parse and check a manifest, every field of it.

    Anything this version did not write (truncated, wrong types, negative or
    overflowing sizes, storage indices out of range, nesting deeper than
    ``MAX_DEPTH``) is ``ArgsFormatError`` naming the field, never an
    ``IndexError`` or a torch error half-way through building tensors.
    """
    if isinstance(manifest, Mapping):
        doc: object = dict(manifest)
    else:
        try:
            doc = json.loads(manifest)
        except (UnicodeDecodeError, json.JSONDecodeError, TypeError) as e:
            raise ArgsFormatError(f"not a helion-remote args manifest (not JSON: {e})") from None
        except RecursionError:
            raise ArgsFormatError(f"args manifest nests deeper than {MAX_DEPTH} levels") from None
    if not isinstance(doc, dict) or "format" not in doc:
        raise ArgsFormatError("not a helion-remote args manifest (no 'format' field)")
    if doc["format"] != FORMAT:
        raise ArgsFormatError(
            f"args manifest has format {doc['format']!r}; this helion_remote reads only "
            f"{FORMAT!r}: run the same helion_remote version on coordinator and workers"
        )
    _check_manifest(doc)
    return doc


def _bad(field: str, expected: str, got: object) -> ArgsFormatError:
    shown = repr(got)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return ArgsFormatError(f"args manifest field {field}: expected {expected}, got {shown}")


def _is_int(value: object, low: int = 0) -> bool:
    return type(value) is int and low <= value <= _INT64_MAX


def _field(node: Mapping[str, Any], key: str, path: str) -> Any:
    if key not in node:
        raise ArgsFormatError(f"args manifest field {path}.{key} is missing")
    return node[key]


def _check_manifest(doc: dict[str, Any]) -> None:
    storages = doc.get("storages")
    if not isinstance(storages, list):
        raise _bad("storages", "a list", storages)
    for i, ref in enumerate(storages):
        where = f"storages[{i}]"
        if not isinstance(ref, dict):
            raise _bad(where, "an object with 'digest' and 'nbytes'", ref)
        digest = _field(ref, "digest", where)
        if not isinstance(digest, str) or not _DIGEST_RE.fullmatch(digest):
            raise _bad(f"{where}.digest", "64 lowercase hex characters", digest)
        if not _is_int(_field(ref, "nbytes", where)):
            raise _bad(f"{where}.nbytes", "an int >= 0", ref["nbytes"])
    nodes = doc.get("args")
    if not isinstance(nodes, list):
        raise _bad("args", "a list", nodes)
    sizes = [ref["nbytes"] for ref in storages]
    for i, node in enumerate(nodes):
        _check_node(node, f"args[{i}]", sizes, 1)


def _check_node(node: object, path: str, storages: list[int], depth: int) -> None:
    if depth > MAX_DEPTH:
        raise ArgsFormatError(f"args manifest field {path}: nesting deeper than {MAX_DEPTH} levels")
    if not isinstance(node, dict):
        raise _bad(path, "a node object with a 't' field", node)
    kind = _field(node, "t", path)
    if kind == "none":
        return
    if kind in ("bool", "int", "str", "float"):
        value = _field(node, "v", path)
        ok = {
            "bool": type(value) is bool,
            "int": type(value) is int,
            "str": type(value) is str,
            "float": type(value) in (int, float) or value in _FLOAT_WORDS,
        }[kind]
        if not ok:
            raise _bad(f"{path}.v", f"a {kind}" if kind != "float" else "a number or 'inf', '-inf', 'nan'", value)
        return
    if kind in ("tuple", "list", "dict"):
        items = _field(node, "items", path)
        if not isinstance(items, list):
            raise _bad(f"{path}.items", "a list", items)
        for i, item in enumerate(items):
            where = f"{path}.items[{i}]"
            if kind != "dict":
                _check_node(item, where, storages, depth + 1)
                continue
            if not isinstance(item, list) or len(item) != 2:
                raise _bad(where, "a [key, value] pair", item)
            key, value = item
            if not isinstance(key, dict) or key.get("t") not in ("str", "int"):
                raise _bad(f"{where}[0]", "a str or int key node", key)
            _check_node(key, f"{where}[0]", storages, depth + 1)
            _check_node(value, f"{where}[1]", storages, depth + 1)
        return
    if kind == "tensor":
        _check_tensor(node, path, storages)
        return
    raise _bad(f"{path}.t", "one of none, bool, int, float, str, tuple, list, dict, tensor", kind)


def _check_tensor(node: dict[str, Any], path: str, storages: list[int]) -> None:
    dtype = dtype_named(_field(node, "dtype", path), f"{path}.dtype")
    shape, stride = _field(node, "shape", path), _field(node, "stride", path)
    if not isinstance(shape, list) or not all(_is_int(n) for n in shape):
        raise _bad(f"{path}.shape", "a list of ints >= 0", shape)
    if not isinstance(stride, list) or not all(_is_int(n) for n in stride):
        raise _bad(f"{path}.stride", "a list of ints >= 0", stride)
    if len(stride) != len(shape):
        raise _bad(f"{path}.stride", f"{len(shape)} strides (one per dimension of shape {shape})", stride)
    offset = _field(node, "offset", path)
    if not _is_int(offset):
        raise _bad(f"{path}.offset", "an int >= 0", offset)
    index = _field(node, "storage", path)
    if not _is_int(index) or index >= len(storages):
        raise _bad(f"{path}.storage", f"a storage index in [0, {len(storages)})", index)
    if "conj" in node and type(node["conj"]) is not bool:
        raise _bad(f"{path}.conj", "a bool", node["conj"])
    # The last byte the view reaches must lie inside its storage: torch's set_
    # would otherwise silently grow the storage with uninitialised memory.
    itemsize = dtype.itemsize
    if all(shape):
        end = (offset + sum((n - 1) * s for n, s in zip(shape, stride)) + 1) * itemsize
    else:
        end = offset * itemsize
    if end > storages[index]:
        raise ArgsFormatError(
            f"args manifest field {path}: shape {shape}, stride {stride}, offset {offset} of {dtype} "
            f"reach byte {end}, but storage {index} has {storages[index]} bytes"
        )


def dtype_named(name: object, field: str = "dtype") -> torch.dtype:
    dtype = getattr(torch, name, None) if isinstance(name, str) else None
    if not isinstance(dtype, torch.dtype) or dtype in _QUANTIZED:
        raise ArgsFormatError(
            f"args manifest field {field}: {name!r} is not a torch dtype this codec ships "
            f"(torch {torch.__version__})"
        )
    return dtype
