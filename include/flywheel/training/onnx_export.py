"""LightGBM binary classifiers to ONNX straight from the model text, as onnxmltools would write them.

onnxmltools dumps the model to JSON, parses every node through a Python hook, numbers nodes with a
quadratic search and deep-copies lists while sorting: about 0.2 s for a 200-tree model, as long as
the rest of storing a version. For the models flywheel trains (binary objective, numerical splits)
the result is a plain function of the model text, built here in one pass with the same node
numbering, the same attribute values and the same missing-value rule, so the same ONNX Runtime
predictions (a unit test compares the attributes with onnxmltools' on models with missing values).
Anything else (categorical splits, linear trees, other objectives) goes to onnxmltools.
"""

from __future__ import annotations

from typing import Any

_NODE_ATTRS = ("nodes_treeids", "nodes_nodeids", "nodes_featureids", "nodes_modes", "nodes_values",
               "nodes_truenodeids", "nodes_falsenodeids", "nodes_missing_value_tracks_true", "nodes_hitrates")
_CLASS_ATTRS = ("class_treeids", "class_nodeids", "class_ids", "class_weights")
_MISSING_NONE = 0  # LightGBM's decision_type bits 2-3: 0 None, 1 Zero, 2 NaN; bit 1: default left


def _parse(text: str) -> tuple[dict[str, str], list[dict[str, str]]] | None:
    """Header and trees of a model text as key -> raw value, or None when not a supported model."""
    body = text.split("\nend of trees", 1)[0]
    blocks = body.split("\n\nTree=")
    header = dict(line.split("=", 1) for line in blocks[0].splitlines() if "=" in line)
    trees = [dict(line.split("=", 1) for line in block.splitlines()[1:] if "=" in line) for block in blocks[1:]]
    if header.get("objective", "").split() != ["binary", "sigmoid:1"] or header.get("num_class") != "1" \
            or "average_output" in blocks[0] or not trees:
        return None
    if any(t.get("num_cat", "0") != "0" or t.get("is_linear", "0") != "0" for t in trees):
        return None
    return header, trees


def tree_ensemble_attributes(text: str) -> dict[str, list[Any]] | None:
    """TreeEnsembleClassifier attributes (nodes sorted by tree, then node id; leaves in depth-first
    order), or None when the model needs onnxmltools."""
    parsed = _parse(text)
    if parsed is None:
        return None
    _, trees = parsed
    nodes: dict[str, list[Any]] = {k: [] for k in _NODE_ATTRS}
    leaves: dict[str, list[Any]] = {k: [] for k in _CLASS_ATTRS}
    for tree_id, tree in enumerate(trees):
        leaf_values = [float(v) for v in tree["leaf_value"].split()]
        if int(tree["num_leaves"]) == 1:
            rows = {0: (0, "LEAF", 0.0, 0, 0, 0)}
            leaves_in_order = [(0, leaf_values[0])]
        else:
            features = [int(v) for v in tree["split_feature"].split()]
            thresholds = [float(v) for v in tree["threshold"].split()]
            decisions = [int(v) for v in tree["decision_type"].split()]
            left = [int(v) for v in tree["left_child"].split()]
            right = [int(v) for v in tree["right_child"].split()]
            rows, leaves_in_order = {}, []
            next_id = 1
            stack = [(0, 0)]  # (LightGBM child reference: >= 0 split index, < 0 ~leaf index; ONNX node id)
            while stack:
                ref, node_id = stack.pop()
                if ref < 0:
                    rows[node_id] = (0, "LEAF", 0.0, 0, 0, 0)
                    leaves_in_order.append((node_id, leaf_values[~ref]))
                    continue
                # Children are numbered when their parent is visited, left first (onnxmltools' order).
                left_id, right_id = next_id, next_id + 1
                next_id += 2
                if decisions[ref] & 1:  # a categorical split: onnxmltools' job (_parse checks num_cat too)
                    return None
                default_left = bool(decisions[ref] & 2)
                missing_type = (decisions[ref] >> 2) & 3
                tracks_true = int(default_left and not (missing_type == _MISSING_NONE and thresholds[ref] < 0.0))
                rows[node_id] = (features[ref], "BRANCH_LEQ", thresholds[ref], left_id, right_id, tracks_true)
                stack.append((right[ref], right_id))
                stack.append((left[ref], left_id))
        for node_id in sorted(rows):
            feature, mode, value, true_id, false_id, tracks_true = rows[node_id]
            for name, item in zip(_NODE_ATTRS, (tree_id, node_id, feature, mode, value, true_id, false_id,
                                                tracks_true, 1.0), strict=True):
                nodes[name].append(item)
        for node_id, weight in leaves_in_order:
            for name, item in zip(_CLASS_ATTRS, (tree_id, node_id, 0, weight), strict=True):
                leaves[name].append(item)
    return {**nodes, **leaves}


def to_onnx_fast(text: str, n_features: int) -> bytes | None:
    """The model as ONNX (inputs ``features``; outputs ``label`` and ``probabilities``), or None."""
    attrs = tree_ensemble_attributes(text)
    if attrs is None:
        return None
    from onnx import TensorProto, helper

    node = helper.make_node("TreeEnsembleClassifier", ["features"], ["label", "probabilities"],
                            name="LgbmClassifier", domain="ai.onnx.ml")
    # The attributes as make_node(**attributes) would add them (sorted by name), without handing the
    # tree arrays to it as keywords it also reads as its own parameters (doc_string, overload).
    attributes: dict[str, object] = {"classlabels_int64s": [0, 1], "post_transform": "LOGISTIC", **attrs}
    node.attribute.extend(helper.make_attribute(key, value) for key, value in sorted(attributes.items()))
    graph = helper.make_graph(
        [node], "flywheel_lightgbm",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, n_features])],
        [helper.make_tensor_value_info("label", TensorProto.INT64, [None]),
         helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 2])],
    )
    model = helper.make_model(graph, producer_name="flywheel", ir_version=4,
                              opset_imports=[helper.make_opsetid("ai.onnx.ml", 1), helper.make_opsetid("", 9)])
    return model.SerializeToString()
