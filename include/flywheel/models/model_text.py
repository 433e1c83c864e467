"""A structural check of a LightGBM text model before LightGBM parses it.

LightGBM's own parser trusts the file: a tree block cut short or an array of the wrong length makes
it call std::terminate, which kills the whole process (a scorer, a training task) instead of raising.
A checksum catches tampering but not a file that was damaged before it was hashed. So every model
file is checked here first, in pure Python (a few milliseconds for hundreds of trees): the header,
``tree_sizes`` against the actual tree blocks, each tree's array lengths and child/feature indices,
and the end marker. What passes is safe to hand to LightGBM; what fails is refused with a reason.
"""

from __future__ import annotations

import json
import math


class InvalidModelText(ValueError):
    """The text is not a complete, consistent LightGBM model; the message says where."""


_INTERNAL_ARRAYS = ("split_feature", "threshold", "decision_type", "left_child", "right_child")


def _header(text: str) -> dict[str, str]:
    head = text.split("\n\n", 1)[0]
    fields = dict(line.split("=", 1) for line in head.splitlines()[1:] if "=" in line)
    if not head.startswith("tree\n") or "version" not in fields:
        raise InvalidModelText("not a LightGBM text model (no 'tree' / 'version=' header)")
    for name in ("max_feature_idx", "tree_sizes"):
        if name not in fields:
            raise InvalidModelText(f"header has no {name}=")
    return fields


def _numbers(tree: int, fields: dict[str, str], name: str, count: int) -> list[float]:
    raw = fields.get(name)
    if raw is None:
        raise InvalidModelText(f"tree {tree}: no {name}=")
    try:
        values = [float(v) for v in raw.split()]
    except ValueError:
        raise InvalidModelText(f"tree {tree}: {name} has a value that is not a number") from None
    if len(values) != count:
        raise InvalidModelText(f"tree {tree}: {name} has {len(values)} values, expected {count}")
    return values


def _check_tree(index: int, block: str, max_feature: int) -> None:
    lines = block.splitlines()
    if not lines or lines[0] != f"Tree={index}":
        raise InvalidModelText(f"tree block {index} does not start with 'Tree={index}'")
    fields = dict(line.split("=", 1) for line in lines[1:] if "=" in line)
    try:
        leaves = int(fields["num_leaves"])
    except (KeyError, ValueError):
        raise InvalidModelText(f"tree {index}: missing or bad num_leaves") from None
    if leaves < 1:
        raise InvalidModelText(f"tree {index}: num_leaves={leaves}")
    values = _numbers(index, fields, "leaf_value", leaves)
    if any(math.isnan(v) for v in values):
        raise InvalidModelText(f"tree {index}: NaN leaf value")
    if leaves == 1:
        return
    arrays = {name: _numbers(index, fields, name, leaves - 1) for name in _INTERNAL_ARRAYS}
    if any(not 0 <= f <= max_feature or f != int(f) for f in arrays["split_feature"]):
        raise InvalidModelText(f"tree {index}: split_feature outside 0..{max_feature}")
    for side in ("left_child", "right_child"):
        for child in arrays[side]:
            # >= 0: an internal node; < 0: leaf ~child
            if child != int(child) or not (-leaves <= child < leaves - 1):
                raise InvalidModelText(f"tree {index}: {side} {child:g} out of range for {leaves} leaves")


def check_model_text(text: str) -> int:
    """Raise InvalidModelText unless ``text`` is a complete LightGBM model; returns the tree count."""
    fields = _header(text)
    try:
        sizes = [int(s) for s in fields["tree_sizes"].split()]
        max_feature = int(fields["max_feature_idx"])
    except ValueError:
        raise InvalidModelText("header: tree_sizes / max_feature_idx are not integers") from None
    end = text.find("end of trees")
    if end < 0:
        raise InvalidModelText("no 'end of trees' marker: the file is cut short")
    start = text.find("Tree=0\n") if sizes else end
    if start < 0:
        raise InvalidModelText("no 'Tree=0' block")
    # tree_sizes are byte counts (LightGBM seeks by them); the text is ASCII, so characters are bytes.
    position = start
    for i, size in enumerate(sizes):
        block = text[position:position + size]
        if len(block) != size or position + size > end:
            raise InvalidModelText(f"tree {i}: block shorter than its recorded size {size}")
        _check_tree(i, block, max_feature)
        position += size
    if text[position:end].strip():
        raise InvalidModelText("bytes between the last tree and 'end of trees' that no tree_sizes entry covers")
    _check_trailer(text[end:])
    return len(sizes)


def _check_trailer(trailer: str) -> None:
    """The parameters block: LightGBM crashes (SIGSEGV) on one cut short, even after complete trees."""
    begin, finish = trailer.find("\nparameters:\n"), trailer.find("\nend of parameters\n")
    if begin < 0 or finish < begin:
        raise InvalidModelText("no complete 'parameters:' ... 'end of parameters' block: the file is cut short")
    for line in trailer[begin + len("\nparameters:\n"):finish].splitlines():
        if line and not (line.startswith("[") and line.endswith("]")):
            raise InvalidModelText(f"damaged parameter line {line[:60]!r}")
    tail = trailer[finish:]
    marker = tail.find("\npandas_categorical:")
    line_end = tail.find("\n", marker + 1) if marker >= 0 else -1
    if marker < 0 or line_end < 0:
        raise InvalidModelText("no complete 'pandas_categorical:' line after the parameters: the file is cut short")
    try:
        json.loads(tail[marker + len("\npandas_categorical:"):line_end])
    except ValueError:
        raise InvalidModelText("damaged 'pandas_categorical:' line") from None
