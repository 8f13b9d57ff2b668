"""The target sets' corruptions: every one deterministic, and a higher severity damages more."""

from __future__ import annotations

import pytest
import torch

from cnnlab import corruptions


def _smooth_images(n=64, size=32, seed=3):
    """Photo-like uint8 images: random 6x6 colour fields upsampled smoothly (pixel noise is no photo)."""
    import torch.nn.functional as F

    cells = torch.rand(n, 3, 6, 6, generator=torch.Generator().manual_seed(seed))
    return (F.interpolate(cells, size=size, mode="bicubic", align_corners=False).clamp(0, 1) * 255).round().to(torch.uint8)


IMAGES = _smooth_images()


@pytest.mark.parametrize("name", list(corruptions.SEVERITIES))
def test_each_corruption_is_deterministic_and_keeps_the_images(name):
    a = corruptions.corrupt(IMAGES, name, 3, seed=5)
    b = corruptions.corrupt(IMAGES, name, 3, seed=5)
    assert torch.equal(a, b)
    assert a.shape == IMAGES.shape and a.dtype == torch.uint8
    assert not torch.equal(a, IMAGES)  # it does something


@pytest.mark.parametrize("name", list(corruptions.SEVERITIES))
def test_a_higher_severity_damages_more(name):
    damage = [(corruptions.corrupt(IMAGES, name, s, seed=0).float() - IMAGES.float()).abs().mean().item()
              for s in range(1, 6)]
    assert damage == sorted(damage) and damage[-1] > damage[0], damage


def test_noise_depends_on_the_seed_only():
    one, other = (corruptions.corrupt(IMAGES, "gaussian_noise", 3, seed=s) for s in (0, 1))
    assert not torch.equal(one, other)
    torch.manual_seed(123)  # the global random state does not matter
    assert torch.equal(one, corruptions.corrupt(IMAGES, "gaussian_noise", 3, seed=0))


def test_noise_never_reseeds_a_runs_random_streams(monkeypatch):
    """Evaluating a target set in the middle of a run leaves its streams alone: the noise was drawn after
    torch.manual_seed, which also reseeded every GPU's stream and, with the data on a GPU, drew it there (so CPU and
    GPU runs of one seed saw different target images). tests/test_gpu.py compares the two devices."""
    reseeded = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", reseeded.append)
    monkeypatch.setattr(torch, "manual_seed", reseeded.append)
    state = torch.get_rng_state()
    noisy = corruptions.corrupt(IMAGES, "gaussian_noise", 3, seed=0)
    assert reseeded == [] and torch.equal(torch.get_rng_state(), state)
    sigma = corruptions.SEVERITIES["gaussian_noise"][0][2]  # the draw: a CPU generator seeded with the run's seed
    expected = (IMAGES / 255 + sigma * torch.randn(IMAGES.shape, generator=torch.Generator().manual_seed(0)))
    assert (noisy.float() - (expected.clamp(0, 1) * 255)).abs().max() <= 1


def test_unknown_names_are_refused():
    with pytest.raises(corruptions.CnnlabError, match="Unknown target set\\(s\\) fog"):
        corruptions.check(["blur", "fog"])
