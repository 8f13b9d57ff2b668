"""Every registered architecture: builds, gives (N, classes) logits, trains a step, honours its knobs."""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from cnnlab.config import compose, resolve
from cnnlab.schema import KNOBS, conf_dir
from cnnlab.errors import CnnlabError
from cnnlab.models import build_model, get_arch, registry
from cnnlab.models.layers import ACTIVATIONS, MinPool2d, activation

ARCHS = sorted(registry())

# valid values, to check that an architecture refuses a knob it has no part for
VALID = {"dense_units": 10, "dropout": 0.1, "batch_norm": "true", "pool": "max", "activation": "relu", "width": 1.5,
         "depth": 3}


def changed_value(spec, knob):
    """A value of `knob` other than the architecture's default that its builder accepts."""
    default = spec.defaults[knob]
    candidates = {
        "batch_norm": lambda: [not default], "pool": lambda: ["min", "max"], "activation": lambda: ["gelu", "silu"],
        "dense_units": lambda: [37], "dropout": lambda: [0.3], "width": lambda: [1.5],
        "depth": lambda: [default + 1, default + 6, default - 6, 11, 13, 16, 18, 34, 40],
    }[knob]()
    for value in (v for v in candidates if v != default):
        try:
            spec.build(**{knob: value})
            return value
        except ValueError:
            continue
    raise AssertionError(f"no other valid {knob} for {spec.name}")


def test_registry_and_conf_arch_match():
    yaml_names = {p.stem for p in (conf_dir() / "arch").glob("*.yaml")}
    assert yaml_names == set(ARCHS)
    for stem in yaml_names:
        assert OmegaConf.load(conf_dir() / "arch" / f"{stem}.yaml").arch.name == stem


@pytest.mark.parametrize("name", ARCHS)
def test_builds_and_trains_one_step(name):
    torch.manual_seed(0)
    model = get_arch(name).build()
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    logits = model(x)
    assert logits.shape == (4, 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert torch.isfinite(model(x)).all()


@pytest.mark.parametrize("name", ARCHS)
def test_through_the_config_with_other_class_count(name):
    cfg = resolve(compose([f"arch={name}"]))
    model = build_model(cfg, num_classes=7)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)


def _modules(model):
    return [type(m) for m in model.modules()]


@pytest.mark.parametrize("name", ARCHS)
@pytest.mark.parametrize("knob", KNOBS)
def test_knob_takes_effect_or_is_rejected(name, knob):
    spec = get_arch(name)
    if knob in spec.fixed:  # a preset: part of what the name means
        with pytest.raises(CnnlabError, match=f"has {knob}={spec.fixed[knob]} built in"):
            resolve(compose([f"arch={name}", f"{knob}={VALID[knob]}"]))
        return
    if knob not in spec.knobs:
        with pytest.raises(CnnlabError, match=f"does not take {knob}"):
            resolve(compose([f"arch={name}", f"{knob}={VALID[knob]}"]))
        return
    value = changed_value(spec, knob)
    base, changed = spec.build(), spec.build(**{knob: value})
    assert repr(base) != repr(changed)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    if knob == "batch_norm":
        assert (nn.BatchNorm2d in _modules(changed)) == value
    elif knob == "dropout":
        assert any(isinstance(m, nn.Dropout) and m.p == value for m in changed.modules())
    elif knob == "pool":
        assert (MinPool2d if value == "min" else nn.MaxPool2d) in _modules(changed)
    elif knob == "activation":
        assert (nn.GELU if value == "gelu" else nn.SiLU) in _modules(changed)
    elif knob in ("width", "depth", "dense_units"):
        assert count(changed) != count(base)
    assert changed(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_min_pool_is_negated_max_pool():
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(MinPool2d(2)(x), -nn.functional.max_pool2d(-x, 2))
    assert torch.equal(MinPool2d(2)(x), x.unfold(2, 2, 2).unfold(3, 2, 2).amin(dim=(-1, -2)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("size", [(30, 30), (13, 13), (7, 10)])
def test_cpu_max_pool_gradient_is_torchs_bit_for_bit(dtype, size):
    """layers.MaxPool2d trains through max_unpool2d of the forward's indices: the same outputs and the same
    gradient as torch's max pooling, ties included (values rounded to one decimal tie often), odd sizes too."""
    from cnnlab.models.layers import MaxPool2d

    x = torch.randn(4, 8, *size).round(decimals=1).to(dtype).contiguous(memory_format=torch.channels_last)
    ours, theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    out = MaxPool2d(2)(ours)
    assert out.grad_fn is not None and "MaxPoolUnpool" in type(out.grad_fn).__name__
    expected = nn.functional.max_pool2d(theirs, 2)
    grad = torch.randn_like(expected)
    out.backward(grad)
    expected.backward(grad)
    assert torch.equal(out, expected) and torch.equal(ours.grad, theirs.grad)
    assert ours.grad.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(MinPool2d(2)(ours), -nn.functional.max_pool2d(-theirs, 2))
    with torch.no_grad():  # evaluation and overlapping windows are torch's own
        assert torch.equal(MaxPool2d(2)(x), nn.functional.max_pool2d(x, 2))
    assert "MaxPoolUnpool" not in type(MaxPool2d(3, 2, 1)(ours).grad_fn).__name__


@pytest.mark.parametrize("amp", [False, True])
@pytest.mark.parametrize("shape", [(64, 64, 6, 0, True), (32, 16, 3, 1, False), (8, 4, 4, 1, True)])
def test_small_conv_weight_gradient_is_torchs(amp, shape):
    """layers.Conv2d computes a small output's weight gradient as one matrix product (im2col): the same forward
    pass and input gradient as nn.Conv2d exactly, and its weight and bias gradients to rounding, under bf16
    autocast too. Larger outputs are nn.Conv2d's own."""
    from cnnlab.models.layers import Conv2d

    cin, cout, size, padding, bias = shape
    torch.manual_seed(0)
    ours = Conv2d(cin, cout, 3, padding=padding, bias=bias).to(memory_format=torch.channels_last)
    theirs = nn.Conv2d(cin, cout, 3, padding=padding, bias=bias).to(memory_format=torch.channels_last)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(16, cin, size, size).contiguous(memory_format=torch.channels_last)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    with torch.autocast("cpu", torch.bfloat16, enabled=amp):
        out, expected = ours(xa), theirs(xb)
    assert "SmallConv" in type(out.grad_fn).__name__
    grad = torch.randn_like(expected)
    out.backward(grad)
    expected.backward(grad)
    assert out.dtype == expected.dtype and torch.equal(out, expected) and torch.equal(xa.grad, xb.grad)
    tolerance = dict(rtol=2e-2, atol=2e-2) if amp else dict(rtol=1e-4, atol=1e-4)  # sums of 256 products
    torch.testing.assert_close(ours.weight.grad, theirs.weight.grad, **tolerance)
    if bias:
        torch.testing.assert_close(ours.bias.grad, theirs.bias.grad, **tolerance)
    big = Conv2d(cin, cout, 3, padding=1)(torch.randn(2, cin, 8, 8, requires_grad=True))
    assert "SmallConv" not in type(big.grad_fn).__name__  # 64 positions: oneDNN's kernel


def test_flatten_gives_a_channels_last_input_its_gradient_in_that_layout():
    """layers.Flatten: the output and gradient of nn.Flatten, the gradient laid out as the input (channels-last),
    so that the activation's backward before it reads one layout."""
    from cnnlab.models.layers import Flatten

    x = torch.randn(4, 8, 3, 3).contiguous(memory_format=torch.channels_last)
    ours, theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    mine, plain = ours * 1, theirs * 1  # a layer's output, as in a net (a leaf's own .grad takes its layout anyway)
    reached = {}
    mine.register_hook(lambda g: reached.setdefault("ours", g))
    plain.register_hook(lambda g: reached.setdefault("theirs", g))
    out, expected = Flatten()(mine), nn.Flatten()(plain)
    grad = torch.randn_like(expected)
    out.backward(grad)
    expected.backward(grad)
    assert torch.equal(out, expected) and torch.equal(ours.grad, theirs.grad)
    assert reached["ours"].is_contiguous(memory_format=torch.channels_last)
    assert not reached["theirs"].is_contiguous(memory_format=torch.channels_last)
    assert "FlattenChannelsLast" in type(out.grad_fn).__name__
    assert "FlattenChannelsLast" not in type(Flatten()(torch.randn(4, 8, 3, 3, requires_grad=True)).grad_fn).__name__


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_an_activation_trains_without_a_hidden_copy_of_its_input(name):
    """Each activation's forward and backward in a net copies nothing: an in-place call whose backward needs the
    input (ReLU6, SiLU, Mish) makes autograd clone that input first, a copy the out-of-place call does not need.
    The values are those of torch.nn.functional's form."""
    from torch.profiler import ProfilerActivity, profile

    x = torch.randn(4, 8, 5, 5, requires_grad=True)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        y = activation(name)(x * 1)  # a layer's output, as in a net
        y.sum().backward()
    copies = [e.name for e in prof.events() if e.name == "aten::clone"]
    assert copies == [], copies
    functional = {"leaky_relu": lambda v: nn.functional.leaky_relu(v, 0.1)}.get(name, getattr(nn.functional, name))
    assert torch.equal(y.detach(), functional(x.detach()))


def test_dense_units_zero_removes_the_hidden_layer():
    with_dense = get_arch("tf_cnn").build(dense_units=64)
    without = get_arch("tf_cnn").build(dense_units=0)
    linears = lambda m: [l for l in m.modules() if isinstance(l, nn.Linear)]  # noqa: E731
    assert len(linears(with_dense)) == 2 and len(linears(without)) == 1


def test_tf_cnn_is_the_tutorial_model():
    model = get_arch("tf_cnn").build()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 64, 64]
    assert sum(p.numel() for p in model.parameters()) == 122_570  # the TF tutorial's model.summary()


@pytest.mark.parametrize("pool,act", [("max", "relu"), ("min", "leaky_relu"), ("max", "gelu"), ("avg", "relu")])
@pytest.mark.parametrize("batch_norm", [False, True])
def test_tf_cnn_pooling_before_the_activation_changes_nothing(pool, act, batch_norm):
    """conv_act_pool pools before a non-decreasing activation: same logits and gradients as the textbook order,
    and the same parameter names (checkpoints stay loadable)."""
    from cnnlab.models.layers import activation, conv_bn_act, pool2d

    torch.manual_seed(0)
    fast = get_arch("tf_cnn").build(pool=pool, activation=act, batch_norm=batch_norm)
    textbook = get_arch("tf_cnn").build(pool=pool, activation=act, batch_norm=batch_norm)
    for i, (cin, cout) in ((0, (3, 32)), (2, (32, 64))):  # conv -> [BN] -> act -> pool, spelled out
        textbook[0][i] = conv_bn_act(cin, cout, 3, padding=0, batch_norm=batch_norm, act=act)
        textbook[0][i + 1] = pool2d(pool)
    assert fast.state_dict().keys() == textbook.state_dict().keys()
    textbook.load_state_dict(fast.state_dict())
    x = torch.randn(8, 3, 32, 32)
    y = torch.randint(0, 10, (8,))
    out_fast, out_textbook = fast(x), textbook(x)
    torch.testing.assert_close(out_fast, out_textbook)
    nn.functional.cross_entropy(out_fast, y).backward()
    nn.functional.cross_entropy(out_textbook, y).backward()
    for (name, a), b in zip(fast.named_parameters(), textbook.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)
    pool_then_act = [type(pool2d(pool)), type(activation(act))]
    reordered = isinstance(fast[0][1], nn.Sequential) and list(map(type, fast[0][1])) == pool_then_act
    assert reordered == (pool in ("max", "min") and act != "gelu")  # GELU is not monotone; avg does not commute


def test_lenet5_follows_the_lecture_table():
    model = get_arch("lenet5").build(in_channels=1)
    shapes = {}
    x = torch.zeros(1, 1, 32, 32)
    for name, layer in model.named_children():
        x = layer(x)
        shapes[name] = tuple(x.shape[1:])
    assert shapes["C1"] == (6, 28, 28) and shapes["S2"] == (6, 14, 14)
    assert shapes["C3"] == (16, 10, 10) and shapes["S4"] == (16, 5, 5)
    assert shapes["C5"] == (120,) and shapes["F6"] == (84,) and shapes["output"] == (10,)


def test_too_small_image_is_a_clear_error():
    from cnnlab.training import train

    with pytest.raises(CnnlabError, match="image_size"):
        train(compose(["data=synthetic", "data.n_train=50", "data.n_test=20", "image_size=8", "epochs=1"]), quiet=True)


def test_describe_vgg16_is_the_lecture_table(cli):
    code, out, err = cli("describe", "arch=vgg16", "image_size=224", "num_classes=1000")
    assert code == 0, err
    assert "138,357,544" in out and "15,237,608" in out  # 138M parameters, 15.2M activations per image
    for shape in ("64x224x224", "64x112x112", "128x112x112", "256x56x56", "512x28x28", "512x14x14", "512x7x7"):
        assert shape in out
    assert out.count("Conv2d 3x3") == 13 and out.count("MaxPool2d") == 5
    # the lecture's layer names, each on its own layer's row (not positions like 0.1.0)
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") > 3}
    for name, shape in {"conv1_1": "64x224x224", "conv1_2": "64x224x224", "pool1": "64x112x112",
                        "conv3_3": "256x56x56", "pool5": "512x7x7", "fc6": "4096", "fc8": "1000"}.items():
        assert f" {shape} " in rows[name], name
    assert not [name for name in rows if name[0].isdigit()]


def test_describe_lenet_is_the_lecture_table(cli):
    code, out, err = cli("describe", "arch=lenet5", "in_channels=1")
    assert code == 0, err
    lines = {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") > 3}
    for layer, shape in {"C1": "6x28x28", "S2": "6x14x14", "C3": "16x10x10", "S4": "16x5x5", "C5": "120",
                         "F6": "84", "output": "10"}.items():
        assert f" {shape} " in lines[layer], layer


def test_describe_knobs_change_the_table_and_bad_ones_are_refused(cli):
    _, plain, _ = cli("describe", "arch=densenet_bc")
    _, wider, _ = cli("describe", "arch=densenet_bc", "arch.growth_rate=24")
    assert plain != wider
    code, _, err = cli("describe", "arch=resnet20", "pool=max")
    assert code == 2 and "takes no pool" in err and "arch.shortcut" in err
    code, _, err = cli("describe", "arch=resnet20", "depth=21")
    assert code == 2 and "has depth=20 built in" in err and "resnet56 (depth=56)" in err


def test_models_lists_every_architecture(cli):
    code, out, err = cli("models")
    assert code == 0, err
    for name in ARCHS:
        assert name in out
    assert "270.0K" in out or "269.7K" in out  # resnet20's 0.27M parameters


def test_models_keeps_its_measurements_until_the_source_changes(monkeypatch, tmp_path):
    from cnnlab import describe, engine

    first = describe.model_table()
    [cached] = (tmp_path / "data").glob("model-costs-*.json")

    def no_building(*args, **kwargs):
        raise AssertionError("measured again")

    with monkeypatch.context() as patched:
        patched.setattr(engine, "count_flops", no_building)
        assert describe.model_table() == first  # read back, not measured
    cached.write_text("{not json")  # a damaged cache is measured again and rewritten
    assert describe.model_table() == first and json.loads(cached.read_text())["vgg16"]["params"] > 0


def test_published_parameter_counts():
    count = lambda name: sum(p.numel() for p in get_arch(name).build().parameters())  # noqa: E731
    assert count("resnet20") == 269_722 and count("resnet56") == 853_018  # He et al.: 0.27M, 0.85M
    assert round(count("resnet110") / 1e6, 1) == 1.7 and round(count("densenet_bc") / 1e6, 1) == 0.8
    assert round(count("mobilenet_v2") / 1e6, 1) == 2.2


def test_googlenet_auxiliary_heads_train():
    from cnnlab.training import train

    result = train(compose(["arch=googlenet", "width=0.25", "arch.aux_logits=true", "data=synthetic",
                            "data.n_train=100", "data.n_test=20", "epochs=1", "batch_size=50"]), quiet=True)
    assert result.status == "FINISHED"
    model = get_arch("googlenet").build(width=0.25, aux_logits=True)
    out = model(torch.randn(2, 3, 32, 32))
    assert isinstance(out, tuple) and len(out) == 3 and all(o.shape == (2, 10) for o in out)
    assert model.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("name, override, sibling", [("resnet18", "depth=50", "resnet50"),
                                                     ("vgg11", "depth=19", "vgg19"),
                                                     ("resnet20", "depth=56", "resnet56")])
def test_presets_cannot_be_overridden_into_another_model(name, override, sibling):
    with pytest.raises(CnnlabError, match=f"use arch={sibling}"):
        resolve(compose([f"arch={name}", override]))
    with pytest.raises(CnnlabError, match=f"use arch={sibling}"):
        get_arch(name).build(**{override.split("=")[0]: int(override.split("=")[1])})
    same = resolve(compose([f"arch={name}", f"depth={get_arch(name).fixed['depth']}"]))  # its own value is fine
    recipe = resolve(compose([f"arch={name}"]))
    assert sum(p.numel() for p in build_model(same).parameters()) == \
        sum(p.numel() for p in build_model(recipe).parameters())


def test_preset_with_no_sibling_names_the_family():
    with pytest.raises(CnnlabError, match=r"no architecture has depth=44; the family is: .*resnet20 \(depth=20\)"):
        resolve(compose(["arch=resnet20", "depth=44"]))


def test_googlenet_auxiliary_heads_use_their_dropout_and_activation():
    model = get_arch("googlenet").build(width=0.25, aux_logits=True, aux_dropout=0.3, activation="gelu")
    aux_dropouts = [m.p for head in model.aux for m in head.modules() if isinstance(m, nn.Dropout)]
    assert aux_dropouts == [0.3, 0.3]
    assert all(any(isinstance(m, nn.GELU) for m in head.modules()) for head in model.aux)
    assert not any(isinstance(m, nn.ReLU) for head in model.aux for m in head.modules())


@pytest.mark.parametrize("arch", ARCHS)
def test_flops_are_what_torchs_flop_counter_counts(arch):
    """count_flops (forward hooks with torch's formulas) equals FlopCounterMode on the same model, and
    describe's per-layer FLOPs add up to it."""
    from torch.utils.flop_counter import FlopCounterMode

    from cnnlab.describe import layers
    from cnnlab.engine import count_flops

    model = get_arch(arch).build().eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, 32, 32))
    assert counter.get_total_flops() > 0
    assert count_flops(model, 3, 32, "cpu") == counter.get_total_flops()
    assert sum(row.flops for row in layers(model, 3, 32)) == counter.get_total_flops()
