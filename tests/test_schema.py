"""One source of truth per config key: the schema's field metadata, from which the lists are derived."""

from dataclasses import MISSING
from pathlib import Path

import pytest

from cnnlab import log, schema


def test_every_config_key_says_which_log_column_it_belongs_to_and_what_it_means():
    """A key added without saying where it shows in the log would show in neither changes column: it fails here."""
    names = [name for name, _ in schema.keys()]
    assert "lr" in names and "data.train_fraction" in names and "eval.targets" in names and "data" not in names
    assert schema.unclassified() == [], f"say their log column (one of {schema.LOG_COLUMNS}) and meaning: key(...)"
    for name, f in schema.keys():
        valid = f.metadata.get("valid")
        assert valid is None or (callable(valid[0]) and valid[1]), name


def test_an_unclassified_key_is_caught():
    from dataclasses import dataclass, field

    @dataclass
    class Grown(schema.Config):
        grad_clip: float = field(default=0.0)  # a knob added the old way, with no metadata

    assert schema.unclassified(Grown) == ["grad_clip"]


def test_the_lists_are_derived_from_the_fields():
    assert schema.KNOBS == ("dense_units", "dropout", "batch_norm", "pool", "activation", "width", "depth")
    assert schema.NOT_IN_KEY == ("experiment", "run_name", "threads", "tracking")
    assert log.ARCH_KEYS == ("arch.name", *schema.KNOBS)
    # each key is in exactly one of the log's groups; precision changes what a run computes: a training change
    groups = [set(schema.keys_in(c)) for c in schema.LOG_COLUMNS]
    assert sum(len(g) for g in groups) == len(set().union(*groups)) == len(list(schema.keys()))
    assert "precision" in log.TRAINING_KEYS and "precision" not in log.BOOKKEEPING_KEYS
    assert "val_split" in log.TRAINING_KEYS and "seed" in log.BOOKKEEPING_KEYS
    ok, valid = schema.RANGES["dropout"]
    assert ok(0.5) and not ok(1.0) and "[0, 1)" in valid


@pytest.mark.parametrize("key", schema.keys_in(schema.TRAINING))
def test_every_training_key_shows_in_training_changes(key):
    """A change to any training key is written in TRAINING CHANGES, and only there."""
    defaults = dict(schema.keys())
    f = defaults[key]
    before = f.default_factory() if f.default is MISSING else f.default.value if hasattr(f.default, "value") else f.default
    after = {bool: lambda v: not v, str: lambda v: "other", list: lambda v: [x * 2 for x in v]}.get(
        type(before), lambda v: (v or 1) * 2 + 1)(before)
    base, changed = {key: before}, {key: after}
    assert log.describe_changes(base, changed, log.TRAINING_KEYS), key
    assert not log.describe_changes(base, changed), key  # not in ARCHITECTURE CHANGES
    assert log.differs(base, changed) == [key]


def test_the_readme_knob_table_is_the_schemas():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    table = readme.split("<!-- knobs -->\n", 1)[1].split("\n<!-- /knobs -->", 1)[0]
    assert table == schema.knob_table(), "README's knob table is stale: paste `python -m cnnlab.schema` into it"
