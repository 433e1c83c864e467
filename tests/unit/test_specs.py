from __future__ import annotations

import copy
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from flywheel.errors import SpecError
from flywheel.specs import load_spec, load_specs, parse_duration, parse_spec

REPO = Path(__file__).resolve().parents[2]
DEMO = yaml.safe_load((REPO / "include" / "specs" / "fraud.yaml").read_text())


def test_demo_spec_loads():
    spec = load_spec(REPO / "include" / "specs" / "fraud.yaml")
    assert spec.name == "fraud"
    assert len(spec.feature_names) == 20
    assert spec.drained_topics == ["fraud.features", "fraud.labels", "fraud.predictions"]
    assert spec.training.window == timedelta(days=7)


def test_spec_hash_ignores_formatting_but_not_content():
    a = parse_spec(copy.deepcopy(DEMO), "a.yaml")
    b = parse_spec(yaml.safe_load(yaml.safe_dump(DEMO, default_flow_style=True)), "b.yaml")
    assert a.spec_hash == b.spec_hash
    changed = copy.deepcopy(DEMO)
    changed["scoring"]["threshold"] = 0.7
    assert parse_spec(changed, "c.yaml").spec_hash != a.spec_hash


def _mutated(change):
    data = copy.deepcopy(DEMO)
    change(data)
    return data


@pytest.mark.parametrize(
    ("change", "field", "reason"),
    [
        (lambda d: d.pop("key_field"), "key_field", "required field is missing"),
        (lambda d: d["features"][2].update(type="double"), "features[2].type", "Input should be"),
        (lambda d: d.update(lables={}), "lables", "unknown field"),
        (lambda d: d["drift"].update(window="soon"), "drift.window", "not a duration"),
        (lambda d: d["topics"].update(labels="fraud.features"), "topics", "must be different topics"),
        (lambda d: d["features"].append({"name": "amount"}), "features", "duplicate feature names"),
        (lambda d: d["gates"].update(min_auc=1.5), "gates.min_auc", "less than or equal to 1"),
        (lambda d: d["topics"].update(features="bad topic!"), "topics.features", "should match pattern"),
        (lambda d: d.update(name="Fraud Model"), "name", "should match pattern"),
    ],
)
def test_errors_name_file_field_and_reason(change, field, reason):
    with pytest.raises(SpecError) as info:
        parse_spec(_mutated(change), "specs/fraud.yaml")
    assert info.value.path == "specs/fraud.yaml"
    assert info.value.field == field
    assert reason in info.value.reason
    assert str(info.value).startswith(f"specs/fraud.yaml: {field}: ")


def test_not_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(bad)
    with pytest.raises(SpecError, match="no such file"):
        load_spec(tmp_path / "absent.yaml")


def test_two_specs_may_not_share_a_name(tmp_path):
    for f in ("a.yaml", "b.yaml"):
        (tmp_path / f).write_text(yaml.safe_dump(DEMO))
    with pytest.raises(SpecError, match="also used by"):
        load_specs(tmp_path)


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("15m", 900), ("6h", 21600), ("7d", 604800), (30, 30)])
def test_durations(text, seconds):
    assert parse_duration(text).total_seconds() == seconds
