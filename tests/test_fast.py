"""The time-to-accuracy techniques (issue 6): each is a knob that does what it says."""

from __future__ import annotations

import pytest
import torch

from cnnlab import data
from cnnlab.config import compose, resolve
from cnnlab.models import build_model, get_arch
from cnnlab.models.airbench import Whiten
from cnnlab.engine import Trainer, make_optimizer, tta_logits, tta_within
from cnnlab.training import train

from .helpers import lr_trace

TINY = ["data=synthetic", "data.n_train=400", "data.n_test=100", "epochs=2", "batch_size=100"]


def test_fast94_recipe_composes_the_techniques():
    cfg = resolve(compose(["recipe=fast94"]))
    assert cfg.arch.name == "airbench" and cfg.arch.whiten and cfg.arch.dirac
    assert (cfg.flip, cfg.translate, cfg.scheduler, cfg.tta, cfg.val_split) == ("alternating", 2, "triangle", True, 0.0)
    assert cfg.label_smoothing == 0.2 and cfg.nesterov
    muon = resolve(compose(["recipe=fast94_muon"]))
    assert (muon.arch.scale, muon.arch.head_std, cfg.arch.head_std) == (1 / 256, 1.0, 0.0)  # the record's head
    assert (muon.arch.whiten_bias_epochs, cfg.arch.whiten_bias_epochs) == (3, 0)


def test_whitening_layer_whitens_patches():
    images = data.synthetic(200, 10).x_train.float() / 255
    layer = Whiten(3)
    layer.fit(images)
    out = torch.nn.functional.conv2d(images - images.mean((0, 2, 3), keepdim=True), layer.weight)
    flat = out[:, :12].permute(0, 2, 3, 1).reshape(-1, 12)
    cov = flat.T @ flat / len(flat)
    assert torch.allclose(cov.diagonal(), torch.ones(12), atol=0.15)  # unit variance along each eigenvector
    assert not layer.weight.requires_grad


def test_airbench_dirac_init_starts_as_identity():
    model = get_arch("airbench").build(whiten=False)
    conv = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)][1]
    x = torch.randn(1, conv.in_channels, 8, 8)
    assert torch.allclose(conv(x)[:, :conv.in_channels], x + (conv.bias[:conv.in_channels, None, None]
                                                            if conv.bias is not None else 0), atol=1e-5)


def test_airbench_head_std_rescales_only_the_head():
    torch.manual_seed(0)
    default = get_arch("airbench").build(whiten=False)
    torch.manual_seed(0)
    unit = get_arch("airbench").build(whiten=False, head_std=1.0)
    heads = [[m for m in net.modules() if isinstance(m, torch.nn.Linear)][-1].weight for net in (default, unit)]
    assert heads[0].std() < 0.1 and abs(heads[1].std().item() - 1) < 1e-5
    assert torch.allclose(heads[1], heads[0] * (heads[1].std() / heads[0].std()))  # the same directions, scaled
    body = lambda net: [p for n, p in net.named_parameters() if p.ndim == 4]  # noqa: E731
    assert all(torch.equal(a, b) for a, b in zip(body(default), body(unit)))


@pytest.mark.parametrize("scheduler, more", [("linear", []), ("triangle", []),
                                             ("linear", ["decoupled_wd=true", "weight_decay=1e-5"])])
def test_whitening_bias_trains_for_its_epochs_only(scheduler, more):
    """arch.whiten_bias_epochs=1 of 2: the whitening bias's rate goes from the biases' rate to 0 over the first
    epoch's 4 steps (whatever the others' schedule), so it moves then and never after (nor decays, with decoupled
    weight decay); a resumed trainer keeps it."""
    from cnnlab.device import Device

    cfg = resolve(compose(["recipe=fast94_muon", *TINY, "arch.whiten_bias_epochs=1", "width=0.25",
                           f"scheduler={scheduler}", *more]))
    torch.manual_seed(0)
    model = build_model(cfg).to(memory_format=torch.channels_last)
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(100, 3, 32, 32, generator=g), torch.randint(0, 10, (100,), generator=g))] * 4
    trainer = Trainer(cfg, model, batches, Device(torch.device("cpu"), "fp32"), 10)
    whiten = model[0]
    group = next(g for g in trainer.optimizer.param_groups if "until_epochs" in g)
    assert group["params"] == [whiten.bias] and group["early_lr"] == pytest.approx(cfg.lr * cfg.norm_lr_scale)
    rates, biases = [], []
    for step in range(8):
        rates.append(group["lr"])
        trainer.step(*batches[0])
        biases.append(whiten.bias.detach().clone())
    assert rates == pytest.approx([group["early_lr"] * f for f in (1, 0.75, 0.5, 0.25, 0, 0, 0, 0)])
    assert not torch.equal(biases[0], biases[2])  # it trains in the first epoch
    assert all(torch.equal(biases[3], b) for b in biases[4:])  # and not after
    assert not whiten.bias.requires_grad and whiten.bias.grad is None  # nor takes a gradient: backward stops sooner
    others = [g["lr"] for g in trainer.optimizer.param_groups if "until_epochs" not in g]
    assert others[0] == pytest.approx(cfg.lr * engine_factor(scheduler, 8 / 8))
    resumed = Trainer(cfg, build_model(cfg).to(memory_format=torch.channels_last), batches,
                      Device(torch.device("cpu"), "fp32"), 10)
    resumed.load_state_dict(trainer.state_dict())
    assert next(g for g in resumed.optimizer.param_groups if "until_epochs" in g)["lr"] == 0
    assert not resumed.model[0].bias.requires_grad


def engine_factor(scheduler: str, t: float) -> float:
    """The schedule's factor at fraction t of the run (engine.make_scheduler's linear and triangle)."""
    if scheduler == "linear":
        return 1 - t
    return 0.2 + 0.8 * t / 0.23 if t < 0.23 else 1 - 0.93 * (t - 0.23) / 0.77


def test_a_checkpoint_written_before_an_arch_parameter_existed_still_builds():
    """A fast94_muon checkpoint from before arch.head_std and arch.whiten_bias_epochs: its config lacks them, and
    `look`, `evaluate --targets` and init_from build its model with their defaults (before, a KeyError)."""
    from cnnlab.checkpoint import model_of
    from cnnlab.config import to_dict

    config = to_dict(resolve(compose(["recipe=fast94_muon", "arch.head_std=0", "arch.whiten_bias_epochs=0"])))
    del config["arch"]["head_std"], config["arch"]["whiten_bias_epochs"]
    torch.manual_seed(0)
    weights = build_model(resolve(compose(["recipe=fast94_muon"]))).state_dict()
    model = model_of({"config": config, "model": weights}, 10, 3, torch.device("cpu"), "an old checkpoint")
    assert model[0].bias_epochs == 0 and torch.equal(model[0].bias, weights["0.bias"])


def test_alternating_flip_mirrors_each_image_every_other_epoch():
    x = torch.arange(8 * 3 * 4 * 4, dtype=torch.uint8).view(8, 3, 4, 4)
    batches = data.Batches(x, torch.arange(8), 8, mean=(0, 0, 0), std=(1 / 255,) * 3, augment=True, translate=0,
                           flip="alternating", image_size=4)
    epochs = [next(iter(batches))[0] for _ in range(3)]
    for a, b in zip(epochs, epochs[1:]):
        assert all(torch.equal(i, j.flip(-1)) for i, j in zip(a, b))  # every image changes side each epoch
    assert torch.equal(epochs[0], epochs[2])


def test_colour_jitter_shifts_and_scales_each_image_by_its_own_draw_each_epoch():
    """brightness=0.3 contrast=0.2: every image of an epoch is its plain augmented self (the same order, shift and
    flip) plus one brightness shift in [-0.3, 0.3], times one contrast factor in [0.8, 1.2]; the draws differ
    between images and between epochs. They are drawn after the epoch's other choices, and only with jitter on,
    so that a run without it keeps its random stream."""
    ds = data.synthetic(n_train=64, n_test=8)
    common = dict(mean=ds.mean, std=ds.std, shuffle=True, augment=True, seed=3, translate=2)
    jittered = data.Batches(ds.x_train, ds.y_train, 16, jitter=(0.3, 0.2), **common)
    plain = data.Batches(ds.x_train, ds.y_train, 16, **common)
    draws = []
    for epoch in range(2):
        plain.load_state_dict(jittered.state_dict())  # the colour draws come after the others: their stream moved on
        shifts, scales = [], []
        for (x, y), (x0, y0) in zip(jittered, plain):
            assert torch.equal(y, y0)
            for image, base in zip(x, x0):  # image = (base + b) * c: fit c and b from two pixels' differences
                c = ((image.flatten() - image.mean()) @ (base.flatten() - base.mean())
                     / (base.flatten() - base.mean()).square().sum())
                b = (image / c - base).mean()
                torch.testing.assert_close(image, (base + b) * c, atol=1e-4, rtol=1e-4)
                shifts.append(b.item())
                scales.append(c.item())
        assert max(map(abs, shifts)) <= 0.3 and all(0.8 <= c <= 1.2 for c in scales)
        assert len(set(round(v, 6) for v in shifts)) == 64 and max(shifts) - min(shifts) > 0.3
        draws.append(shifts)
    assert draws[0] != draws[1]
    cfg = resolve(compose(["recipe=fast94_muon", "brightness=0.3", "contrast=0.2", *TINY]))
    assert data.loaders(data.synthetic(n_train=400, n_test=100), cfg, torch.device("cpu")).train.jitter == (0.3, 0.2)


def test_fast94_speedrun_is_the_newer_record_in_cnnlab_knobs():
    """recipe=fast94_speedrun: cifar10-speedrun's changes to airbench94_muon, its sums-over-the-batch rates turned
    into cnnlab's mean-loss ones; batch norms with the record's momentum."""
    cfg = resolve(compose(["recipe=fast94_speedrun"]))
    assert (cfg.batch_size, cfg.max_steps, cfg.activation, cfg.label_smoothing) == (1536, 245, "silu", 0.09)
    assert (cfg.brightness, cfg.contrast, cfg.muon_norm_every, cfg.muon_lr) == (0.1399, 0.1308, 8, 0.205)
    assert cfg.lr / 1536 == pytest.approx(0.5415, rel=1e-3)  # the head's rate
    assert cfg.lr * cfg.norm_lr_scale / 1536 == pytest.approx(0.0573, rel=1e-3)  # the biases'
    assert cfg.lr * cfg.weight_decay == pytest.approx(1.0418e-6 * 1536, rel=1e-3)  # the decay per step
    assert cfg.arch.whiten_bias_epochs * (50000 // 1536) == 7  # the whitening bias's 7 steps
    model = build_model(cfg)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) == 6 and {m.momentum for m in norms} == {0.4434}
    assert {m.momentum for m in build_model(resolve(compose(["recipe=fast94_muon"]))).modules()
            if isinstance(m, torch.nn.BatchNorm2d)} == {0.4}
    # GELU after the whitening conv, SiLU after every other; the record's Newton-Schulz coefficients reach Muon
    activations = [type(m).__name__ for m in model.modules() if isinstance(m, (torch.nn.GELU, torch.nn.SiLU))]
    assert activations == ["GELU"] + ["SiLU"] * 6
    muon = make_optimizer(cfg, model).optimizers[-1]
    assert muon.param_groups[0]["ns_coefficients"] == (3.4576, -4.7391, 2.0843)


def test_triangle_schedule_and_decoupled_weight_decay():
    cfg = resolve(compose(["optimizer=sgd", "lr=1.0", "scheduler=triangle", "epochs=1", "weight_decay=0.1",
                           "decoupled_wd=true", "momentum=0"]))
    model = torch.nn.Linear(2, 1, bias=False)
    lrs = [group[0] for group in lr_trace(cfg, model, steps_per_epoch=100, steps=100)][:100]
    assert lrs[0] == pytest.approx(0.2) and max(lrs) == pytest.approx(1.0, abs=0.02) and lrs.index(max(lrs)) == 23
    assert lrs[-1] == pytest.approx(0.07, abs=0.02)
    # no gradient: only the decoupled decay moves the weights, by lr_t * wd each step
    opt = make_optimizer(cfg, model)
    model.weight.data.fill_(1.0)
    model.weight.grad = torch.zeros_like(model.weight)
    opt.param_groups[0]["lr"] = 0.5
    opt.step()
    assert model.weight.data.flatten().tolist() == pytest.approx([1 - 0.5 * 0.1] * 2)


def test_tta_averages_mirrored_and_shifted_views():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
    x = torch.randn(2, 3, 8, 8)
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")
    views = [x, padded[..., :8, :8], padded[..., 2:, 2:]]
    mirror = lambda v: 0.5 * (model(v) + model(v.flip(-1)))  # noqa: E731
    expected = 0.5 * mirror(views[0]) + 0.25 * (mirror(views[1]) + mirror(views[2]))
    assert torch.allclose(tta_logits(model, x), expected, atol=1e-6)
    assert torch.allclose(tta_logits(model, x, plain=model(x)), expected, atol=1e-6)  # the plain view given


def test_tta_share_spends_the_views_on_the_least_confident_predictions():
    """tta_share=0.25: the quarter of all the images whose top softmax probability is lowest gets tta_logits, the
    others keep their plain logits, whatever the chunk; share 1 is tta_logits for all. The config key at its default
    leaves a run's identity as it was."""
    from cnnlab.config import identity

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
    x = torch.randn(20, 3, 8, 8)
    with torch.no_grad():
        plain = model(x)
        full = tta_logits(model, x, plain)
    within = lambda share, chunk: tta_within(model, lambda i: x[i], plain, share, None, chunk)  # noqa: E731
    for chunk in (1, 3, 20):
        everything, used = within(1.0, chunk)
        torch.testing.assert_close(everything, full)
        assert used == 1.0
        shared, used = within(0.25, chunk)
        changed = (shared != plain).any(1)
        least = plain.softmax(1).amax(1).argsort()[:5]
        assert used == 0.25 and changed.sum() == 5 and changed[least].all(), chunk
        torch.testing.assert_close(shared[least], full[least])
    # the (trial, config) keys runs recorded before tta_share existed: at its default they are still theirs
    # (and before arch.head_std and arch.whiten_bias_epochs: the recipe has taken the record's values since; and
    # before brightness, contrast, muon_norm_every and arch.bn_momentum, which it leaves at their defaults)
    before = ["recipe=fast94_muon", "tta_share=1", "arch.head_std=0", "arch.whiten_bias_epochs=0"]
    assert identity(resolve(compose(before))) == ("acacfef6a495cf85", "ca2c8becb15e33da")
    assert identity(resolve(compose(["recipe=fast94_muon", "tta_share=0.5"])))[1] != "ca2c8becb15e33da"


def test_progressive_resizing_trains_the_early_epochs_smaller(monkeypatch):
    """progressive_epochs=2 progressive_size=16: the first two epochs' batches are the same images, shifts and
    flips resized to 16x16; the last epoch, validation and the test are at 32. Its identity keys are left out at
    their default (the pinned keys above)."""
    import torch.nn.functional as F

    ds = data.synthetic(n_train=64, n_test=8)
    common = dict(mean=ds.mean, std=ds.std, shuffle=True, augment=True, seed=3)
    early = data.Batches(ds.x_train, ds.y_train, 32, early=(2, 16), **common)
    plain = data.Batches(ds.x_train, ds.y_train, 32, **common)
    for epoch in range(3):
        for (x, y), (x32, y32) in zip(early, plain):
            assert torch.equal(y, y32)
            expected = F.interpolate(x32, size=16, mode="bilinear", align_corners=False, antialias=True)
            assert torch.equal(x, expected if epoch < 2 else x32)
    sizes, step = [], Trainer.step
    monkeypatch.setattr(Trainer, "step", lambda self, x, y: sizes.append(x.shape[-1]) or step(self, x, y))
    result = train(compose(["recipe=fast94", *TINY, "epochs=3", "width=0.25", "progressive_epochs=2",
                            "progressive_size=16"]), quiet=True)
    assert sizes == [16] * 8 + [32] * 4 and result.status == "FINISHED"  # 400 images, batches of 100


def test_fast94_progressive_is_fast94_speedrun_with_its_early_epochs_smaller():
    from cnnlab.config import to_dict

    ours, base = (to_dict(resolve(compose([f"recipe={r}"]))) for r in ("fast94_progressive", "fast94_speedrun"))
    assert {k: v for k, v in ours.items() if base[k] != v} == {"progressive_epochs": 2}
    assert ours["progressive_size"] == 24 and ours["translate_fill"] == "reflect" and ours["arch"]["name"] == "airbench"


@pytest.mark.parametrize("overrides,words", [
    (["progressive_epochs=2", "budget=1m"], "cannot be combined with budget="),
    (["progressive_epochs=2", "epochs=2"], "leaves no epoch at image_size=32"),
    (["progressive_epochs=1", "progressive_size=32", "epochs=2"], "is not smaller than image_size=32"),
    (["arch=tf_cnn", "progressive_epochs=1", "epochs=2"], "arch=tf_cnn cannot train at progressive_size=24"),
])
def test_progressive_resizing_refuses_what_it_cannot_do(overrides, words):
    from cnnlab.errors import CnnlabError

    import re

    base = [o for o in TINY if not o.startswith("epochs=")]
    with pytest.raises(CnnlabError, match=re.escape(words)):
        train(compose([*base, *overrides]), quiet=True)


@pytest.mark.parametrize("value, says", [
    ("arch.whiten_bias_epochs=2", "arch.whiten_bias_epochs=2.0 needs the whitening layer, and arch.whiten=false"),
    ("arch.bn_momentum=1.5", "arch.bn_momentum=1.5 is out of range"),
    ("arch.stem_activation=swish", "arch.stem_activation=swish is not an activation: it is one of relu,"),
])
def test_airbench_refuses_parameters_it_cannot_honour(cli, value, says):
    code, out, err = cli("train", "recipe=fast94", *TINY, "arch.whiten=false", value, "-q")
    assert code == 2 and says in err and "Traceback" not in err, err
    assert "run_id=" not in out  # refused before anything was recorded


def test_the_final_test_gives_the_last_epoch_its_point_of_the_test_curve(monkeypatch, mlflow_client):
    """Without a validation split the final test scores the last epoch's weights: that epoch is not tested
    twice, and its point of the curve is the final test's plain view, the same as a plain pass would give."""
    from cnnlab.engine import scores

    passes, evaluate, predict = [], Trainer.evaluate, Trainer.predict

    def counted(self, batches, **kwargs):
        passes.append(("epoch", None))
        return evaluate(self, batches, **kwargs)

    def final(self, batches, **kwargs):  # the final test's plain pass (TTA follows on its least confident)
        logits = predict(self, batches, **kwargs)
        passes.append(("final", scores(logits, logits, batches.y, self.num_classes)[:2]))
        return logits

    monkeypatch.setattr(Trainer, "evaluate", counted)
    monkeypatch.setattr(Trainer, "predict", final)
    result = train(compose(["recipe=fast94", *TINY, "epochs=3", "width=0.25"]), quiet=True)
    assert [name for name, _ in passes] == ["epoch", "epoch", "final"]  # epochs 1 and 2, then the final test
    plain_loss, plain_acc = passes[-1][1]
    last = result.history[-1]
    assert (last["epoch_test_loss"], last["epoch_test_acc"]) == pytest.approx((plain_loss, plain_acc))
    assert result.metrics["no_tta_test_acc"] == last["epoch_test_acc"]
    curve = mlflow_client.get_metric_history(result.run_id, "epoch_test_acc")
    assert sorted((m.step, m.value) for m in curve) == [(h["epoch"], h["epoch_test_acc"]) for h in result.history]


def test_fast_recipe_trains_end_to_end_with_ema():
    result = train(compose(["recipe=fast94", *TINY, "ema=0.9", "width=0.25"]), quiet=True)
    assert result.status == "FINISHED"
    assert "no_tta_test_acc" in result.metrics and result.metrics["compile_time"] == 0
    assert [h.get("val_acc") for h in result.history] == [None, None]  # val_split=0: all of train trains


@pytest.mark.slow
def test_compile_time_is_measured_apart():
    result = train(compose(["arch=tf_cnn", *TINY, "compile=true"]), quiet=True)
    assert result.status == "FINISHED" and result.metrics["compile_time"] > 0
    assert result.metrics["train_time"] < result.metrics["wall_time"]


def test_norm_lr_scale_puts_batchnorm_in_a_faster_group():
    cfg = resolve(compose(["arch=vgg_small", "norm_lr_scale=64", "lr=0.1", "weight_decay=6.4e-3"]))
    model = build_model(cfg)
    opt = make_optimizer(cfg, model)
    fast = [g for g in opt.param_groups if g["lr"] == pytest.approx(6.4)]
    assert len(opt.param_groups) == 2 and len(fast) == 1
    bn = {id(p) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d) for p in m.parameters()}
    assert {id(p) for p in fast[0]["params"]} == bn
    assert fast[0]["weight_decay"] == pytest.approx(1e-4)  # lr x wd, the decay per step, is unchanged
    # the schedule scales both groups alike: at one-cycle's peak the BatchNorm group is 64x the common lr
    onecycle = resolve(compose(["arch=vgg_small", "norm_lr_scale=64", "scheduler=onecycle", "lr=0.1", "epochs=1"]))
    peak = lr_trace(onecycle, model, steps_per_epoch=100, steps=100)[:100]
    top = max(peak, key=lambda lrs: lrs[0])
    assert top[0] == pytest.approx(0.1, rel=0.02) and top[1] == pytest.approx(6.4, rel=0.02)
    assert peak[0][1] / peak[0][0] == pytest.approx(64) and peak[-1][0] < 0.01


def test_lookahead_pulls_weights_towards_their_slow_average():
    from cnnlab.engine import Lookahead

    model = torch.nn.Linear(1, 1, bias=False)
    model.weight.data.fill_(0.0)
    la = Lookahead(model, total_steps=10, every=5)
    model.weight.data.fill_(1.0)
    for _ in range(4):
        la.step()
    assert model.weight.item() == 1.0  # nothing happens between averaging steps
    la.step()  # step 5 of 10: decay 0.95^5 x 0.5^3 = 0.097
    assert model.weight.item() == pytest.approx(1 - 0.95 ** 5 * 0.125, abs=1e-6)
    model.weight.data.fill_(5.0)
    la.finish()
    assert model.weight.item() == pytest.approx(1 - 0.95 ** 5 * 0.125, abs=1e-6)
