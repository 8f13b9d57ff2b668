"""optimizer=muon: torch's Muon on the weight matrices, SGD with Nesterov momentum on everything else.

Muon (torch.optim.Muon) replaces each update of a weight matrix by the nearest semi-orthogonal matrix
(Newton-Schulz iterations in bf16). It takes 2-D parameters only, so each conv filter bank (out, in, kh, kw)
is handed to it as a 2-D view of the same memory, (out, in * kh * kw) in the order the filter is stored
(orthogonalising is blind to the order of the columns). As airbench94_muon does, each matrix is rescaled to
norm sqrt(out) before its step (before every `muon_norm_every`-th step: cifar10-speedrun's 8), so a step
changes every filter by about `muon_lr` of its size whatever the gradient's scale. `Combined` presents both
optimizers as one, so that the schedulers, checkpoints and weight averaging of engine.py work unchanged.
"""

from __future__ import annotations

import functools
import weakref

import torch

from .schema import TORCH_NS_COEFFICIENTS

NS_STEPS = 3  # airbench94_muon's: enough for an update that only needs to be roughly orthogonal


def _channels_last(p: torch.Tensor) -> bool:
    return p.ndim == 4 and p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()


def as_matrix(t: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """`t` (2-D or more) as (rows = output units, the rest), columns in the order a channels_last filter bank
    stores them, (kh, kw, in), when `channels_last`: a view where the layout allows, else a copy."""
    if channels_last:
        return t.permute(0, 2, 3, 1).reshape(len(t), -1)
    return t.reshape(len(t), -1)


def matrix_view(p: torch.Tensor) -> torch.Tensor:
    """Parameter `p` as a 2-D view of its memory (rows = output units), in the order it is stored."""
    return as_matrix(p, _channels_last(p))


class Combined(torch.optim.Optimizer):
    """Several optimizers stepped as one: `param_groups` holds all their groups (the same dicts), so a
    scheduler sets each group's rate; the state dict holds each optimizer's."""

    def __init__(self, *optimizers: torch.optim.Optimizer):
        self.optimizers = optimizers
        super().__init__([g for opt in optimizers for g in opt.param_groups], {})

    @torch.no_grad()
    def step(self, closure=None):
        for opt in self.optimizers:
            opt.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"optimizers": [opt.state_dict() for opt in self.optimizers]}

    def load_state_dict(self, state: dict) -> None:
        for opt, saved in zip(self.optimizers, state["optimizers"]):
            opt.load_state_dict(saved)


class MatrixMuon(torch.optim.Muon):
    """torch.optim.Muon over 2-D views of `params` (any shape of 2 dimensions or more), normalising each
    weight to norm sqrt(rows) before its step.

    Each view gets its gradient as soon as backward has accumulated its parameter's (a post-accumulate hook),
    so whatever reads the optimizer's gradients before its step sees them: fp16's GradScaler unscales them and
    finds an inf there (when the views got theirs only inside step(), they stayed scaled x65536 and an
    overflow went undetected into the weights)."""

    def __init__(self, params, lr: float, momentum: float, norm_every: int = 1,
                 ns_coefficients=TORCH_NS_COEFFICIENTS):
        self.pairs = [(p, torch.nn.Parameter(matrix_view(p.detach()))) for p in params]
        for p, view in self.pairs:
            assert view.data_ptr() == p.data_ptr(), "a 2-D view must share the parameter's memory"
        super().__init__([view for _, view in self.pairs], lr=lr, momentum=momentum, nesterov=True,
                         weight_decay=0.0, ns_steps=NS_STEPS, ns_coefficients=tuple(ns_coefficients))
        self.norm_every = norm_every
        me = weakref.ref(self)  # the hooks outlive an optimizer dropped before its model (budget='s probe)

        def hook(p, i: int) -> None:
            if me() is not None:
                me().take_grad(i)

        for i, (p, _) in enumerate(self.pairs):
            p.register_post_accumulate_grad_hook(functools.partial(hook, i=i))

    def take_grad(self, i: int) -> None:
        """The gradient of parameter i, read in the order its view stores it (a view of it where it can be)."""
        p, view = self.pairs[i]
        view.grad = None if p.grad is None else as_matrix(p.grad, _channels_last(p))

    @torch.no_grad()
    def step(self, closure=None):
        # the steps taken, kept in the group so that a checkpoint holds it: the rescaling's phase survives a resume
        group = self.param_groups[0]
        group["steps_taken"] = group.get("steps_taken", 0) + 1
        rescale = group["steps_taken"] % self.norm_every == 0
        for i, (p, view) in enumerate(self.pairs):
            if view.grad is None:  # a gradient set without backward
                self.take_grad(i)
            if rescale:
                view.mul_(len(view) ** 0.5 / view.norm().clamp(min=1e-12))
        super().step()
        for _, view in self.pairs:
            view.grad = None

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p, view in self.pairs:
            p.grad = view.grad = None


def make_muon(cfg, model, coupled_wd: float, fused: dict, regroup=lambda groups: groups) -> Combined:
    """Muon (rate `muon_lr`) on every conv filter and every dense weight that does not give the class scores;
    SGD (rate `lr`, the config's momentum and Nesterov) on the rest: the output layer, and every bias and
    normalisation parameter at lr x norm_lr_scale. regroup: applied to SGD's groups (engine.early_groups)."""
    from torch import nn

    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    num_classes = linears[-1].out_features if linears else 0  # the last dense layer gives the class scores
    matrices = [m.weight for m in model.modules()
                if isinstance(m, nn.modules.conv._ConvNd) or (isinstance(m, nn.Linear) and m.out_features != num_classes)]
    matrices = [w for w in matrices if w.requires_grad]
    taken = {id(w) for w in matrices}
    small = {id(p) for n, p in model.named_parameters() if p.ndim <= 1}  # biases and normalisation parameters
    head = [p for p in model.parameters() if p.requires_grad and id(p) not in taken and id(p) not in small]
    rest = [p for p in model.parameters() if p.requires_grad and id(p) in small and id(p) not in taken]
    groups = [g for g in ({"params": head, "lr": cfg.lr, "weight_decay": coupled_wd},
                          {"params": rest, "lr": cfg.lr * cfg.norm_lr_scale,
                           "weight_decay": coupled_wd / cfg.norm_lr_scale}) if g["params"]]
    groups = regroup(groups)
    optimizers = []
    if groups:
        optimizers.append(torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum,
                                          nesterov=cfg.nesterov and cfg.momentum > 0, **fused))
    if matrices:
        optimizers.append(MatrixMuon(matrices, lr=cfg.muon_lr, momentum=cfg.muon_momentum,
                                     norm_every=cfg.muon_norm_every, ns_coefficients=cfg.muon_ns_coefficients))
    return Combined(*optimizers)
