"""Config composition, validation and the clean errors bad overrides give."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cnnlab.config import compose, resolve
from cnnlab.errors import CnnlabError


def test_default_config_is_the_exercise_baseline():
    cfg = resolve(compose([]))
    assert cfg.arch.name == "tf_cnn"
    assert cfg.optimizer == "adam" and cfg.epochs == 10
    # knobs the architecture honours are made explicit; the ones it lacks stay null
    assert cfg.dense_units == 64 and cfg.dropout == 0.0 and cfg.pool == "max"
    assert cfg.depth is None


def test_overrides_and_arch_recipe_compose():
    cfg = resolve(compose(["arch=vgg_small", "dropout=0.5", "lr=0.02", "data.train_fraction=0.1"]))
    assert cfg.arch.name == "vgg_small"
    assert cfg.optimizer == "sgd"  # from conf/arch/vgg_small.yaml
    assert cfg.dropout == 0.5 and cfg.lr == 0.02 and cfg.data.train_fraction == 0.1


@pytest.mark.parametrize("override, needle", [
    ("lr=abc", "could not be converted to Float"),
    ("dropout=1.5", "dropout=1.5 is out of range: it must be a number in [0, 1)"),
    ("batch_size=0", "batch_size=0 is out of range"),
    ("epochs=-1", "epochs=-1 is out of range"),
    ("optimizer=rmsprop", "expected one of [sgd, adam, adamw, muon]"),
    ("pool=median", "expected one of [max, avg, min]"),
    ("data.train_fraction=0", "data.train_fraction=0.0 is out of range"),
    ("no_such_key=1", "no_such_key"),
    ("arch=nope", "arch=nope is not one of the arch presets. Valid: airbench, alexnet"),
    ("arch.growth_rate=24", "arch=tf_cnn has no parameter 'growth_rate' (in arch.growth_rate=...). It belongs to "
                            "arch=densenet_bc"),
    ("seed=99999999999999999999", "seed=99999999999999999999 is out of range: it must be an integer in [0, 2^32)"),
    ("experiment=", "experiment= is out of range: it must be a name of 1 to 500 characters"),
    ("experiment=" + "x" * 10_000, "(10,000 characters) is out of range: it must be a name of 1 to 500"),
    ("lr=", "lr"),
    ("depth=3", "arch=tf_cnn does not take depth=3"),
    ("+arch.blocks=4", "Bad architecture parameter for arch=tf_cnn"),
])
def test_bad_input_is_one_clean_message(override, needle):
    with pytest.raises(CnnlabError) as info:
        resolve(compose([override]))
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


def test_a_missing_arch_parameter_is_named_for_the_architecture_a_recipe_chose():
    """recipe=fast94 chooses airbench through its defaults list: the message names airbench's parameters, not
    those of the default architecture, and points a shared knob given as arch.<knob> to its own key."""
    with pytest.raises(CnnlabError) as info:
        compose(["recipe=fast94", "arch.width=0.5"])
    assert str(info.value).startswith("arch=airbench has no parameter 'width'")
    assert "width is a key of its own (width=...)" in str(info.value)
    assert "arch.head_std" in str(info.value)


def test_budget_beside_an_explicit_length_is_refused_not_dropped():
    for given in (["epochs=3"], ["max_steps=50"], ["epochs=3", "max_steps=50"]):
        with pytest.raises(CnnlabError, match="budget= plans the run's length itself"):
            compose(["budget=1m", *given])
    assert compose(["budget=1m", "recipe=fast94"]).budget == "1m"  # a preset's epochs give way to the budget


def test_a_validation_split_that_takes_everything_names_val_split():
    from cnnlab.data import split, synthetic

    with pytest.raises(CnnlabError, match="val_split=0.9999 takes every training image of 100"):
        split(synthetic(100, 20), 0.9999)


def test_unknown_arch_lists_the_valid_ones():
    with pytest.raises(CnnlabError) as info:
        compose(["arch=resnet9000"])
    for name in ("tf_cnn", "lenet5", "vgg_small"):
        assert name in str(info.value)


def test_inapplicable_knob_names_the_knobs_that_apply():
    with pytest.raises(CnnlabError) as info:
        resolve(compose(["arch=lenet5", "depth=2"]))
    assert "dense_units, dropout, batch_norm, pool, activation, width" in str(info.value)


@pytest.mark.parametrize("args", [["train", "arch=nope"], ["train", "dropout=1.5"], ["train", "lr=abc"],
                                  ["data", "import", "/no/such/file.tar.gz"]])
def test_cli_bad_input_exits_2_without_traceback(cli, args):
    code, out, err = cli(*args)
    assert code == 2
    assert err.startswith("error: ")
    assert "Traceback" not in err + out


def test_cli_process_exit_code_and_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "cnnlab.cli", "train", "foo=1"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "foo" in proc.stderr


def test_help_is_fast_and_imports_nothing_heavy():
    code = ("import sys; sys.argv = ['cnnlab', '--help']\n"
            "from cnnlab.cli import main\n"
            "try: main()\nexcept SystemExit: pass\n"
            "heavy = [m for m in ('torch', 'mlflow', 'pandas', 'torchvision', 'optuna', 'openpyxl') if m in sys.modules]\n"
            "print('HEAVY', heavy)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout
    assert "train" in proc.stdout
