"""Weight initialisation schemes of the transfer-learning survey (section III.D, Table I).

:data:`INITIALIZERS` maps a scheme's name to a function that fills one weight tensor in
place and returns it; :func:`apply_init` applies a scheme to every convolution and linear
layer of a network (biases to zero, normalisation layers left at weight 1 / bias 0).
``fan_in`` / ``fan_out`` are PyTorch's (input/output maps x kernel volume):

* ``kaiming_normal`` / ``kaiming_uniform`` (He, eq. 19/20): std sqrt(2/fan_in), bound sqrt(6/fan_in);
* ``xavier_normal`` / ``xavier_uniform`` (eq. 18/17): std sqrt(2/(fan_in+fan_out)), bound sqrt(6/(fan_in+fan_out));
* ``lecun_normal`` / ``lecun_uniform`` (eq. 15/16): std sqrt(1/fan_in), bound sqrt(3/fan_in);
* ``orthogonal``: the weight flattened to (out, in x kernel) has orthonormal rows (or columns);
* ``truncated_normal`` (eq. 8-9): N(0, 0.05^2) cut at +-2 sigma;
* ``random_normal``: N(0, 0.05^2); ``random_uniform`` (eq. 13): U(-0.05, 0.05) (Keras' defaults);
* ``identity``: the identity map (``eye`` for square linear weights, ``dirac`` for convolutions
  with as many input as output maps); other layers keep the fallback scheme.

``pretrained`` (weights from the zoo or a checkpoint) is not a fill rule: it is applied by
:mod:`trainables.strategy` by loading a state dict. "Zeros & Constant" is left out (Table I:
no symmetry breaking, every neuron learns the same feature).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from medcore.errors import ConfigError

# Keras' defaults for the schemes the survey gives without a scale.
RANDOM_STD = 0.05
RANDOM_BOUND = 0.05

# Layers an initialiser fills (MONAI and torch convolutions/linear layers all derive from these).
WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear)


def fans(weight: torch.Tensor) -> tuple[int, int]:
    """(fan_in, fan_out) of a weight as PyTorch defines them."""
    return nn.init._calculate_fan_in_and_fan_out(weight)


def lecun_normal_(w: torch.Tensor) -> torch.Tensor:
    fan_in, _ = fans(w)
    with torch.no_grad():
        return w.normal_(0.0, 1.0 / math.sqrt(fan_in))


def lecun_uniform_(w: torch.Tensor) -> torch.Tensor:
    fan_in, _ = fans(w)
    bound = math.sqrt(3.0 / fan_in)
    with torch.no_grad():
        return w.uniform_(-bound, bound)


def truncated_normal_(w: torch.Tensor) -> torch.Tensor:
    return nn.init.trunc_normal_(w, 0.0, RANDOM_STD, -2 * RANDOM_STD, 2 * RANDOM_STD)


def identity_allowed(w: torch.Tensor) -> bool:
    """Identity needs a square map: as many outputs as inputs (2D matrix or conv kernel)."""
    return w.dim() >= 2 and w.shape[0] == w.shape[1]


def identity_(w: torch.Tensor) -> torch.Tensor:
    if not identity_allowed(w):
        raise ValueError(f"identity needs as many outputs as inputs, got weight shape {tuple(w.shape)}")
    return nn.init.eye_(w) if w.dim() == 2 else nn.init.dirac_(w)


INITIALIZERS = {
    "kaiming_normal": lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu"),
    "kaiming_uniform": lambda w: nn.init.kaiming_uniform_(w, nonlinearity="relu"),
    "xavier_normal": nn.init.xavier_normal_,
    "xavier_uniform": nn.init.xavier_uniform_,
    "lecun_normal": lecun_normal_,
    "lecun_uniform": lecun_uniform_,
    "orthogonal": nn.init.orthogonal_,
    "truncated_normal": truncated_normal_,
    "random_normal": lambda w: nn.init.normal_(w, 0.0, RANDOM_STD),
    "random_uniform": lambda w: nn.init.uniform_(w, -RANDOM_BOUND, RANDOM_BOUND),
    "identity": identity_,
}
# ``default``: PyTorch's own per-layer initialisation (the recipe every other search uses);
# ``pretrained``: weights loaded from a zoo model or a checkpoint.
SCHEMES = ("default", *INITIALIZERS, "pretrained")
IDENTITY_FALLBACK = "kaiming_normal"


def check_scheme(name: str) -> str:
    if name not in SCHEMES:
        raise ConfigError(f"unknown initialisation '{name}'; known: {', '.join(SCHEMES)}", "init")
    return name


def apply_init(model: nn.Module, name: str, fallback: str = IDENTITY_FALLBACK) -> dict:
    """Fill every conv/linear weight of ``model`` by scheme ``name``; biases become zero.

    Returns counts: ``{"initialised": n, "fallback": m}`` where ``fallback`` counts layers
    whose shape the scheme cannot fill (identity on a non-square layer), filled by ``fallback``.
    ``default`` leaves the model as built.
    """
    check_scheme(name)
    if name == "pretrained":
        raise ConfigError("'pretrained' loads weights (strategy.load_pretrained), it is not a fill rule", "init")
    counts = {"initialised": 0, "fallback": 0}
    if name == "default":
        return counts
    for module in model.modules():
        if not isinstance(module, WEIGHTED) or module.weight is None:
            continue
        w = module.weight
        if name == "identity" and not identity_allowed(w):
            INITIALIZERS[fallback](w)
            counts["fallback"] += 1
        else:
            INITIALIZERS[name](w)
            counts["initialised"] += 1
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    return counts


def prior_bias(model: nn.Module, labels, task: str) -> nn.Linear:
    """Start the output layer's bias at the training labels' prior (Lin et al. 2017, focal loss, 4.1).

    The net's last ``nn.Linear`` gets log class frequencies (softmax tasks) or the log-odds of
    each label (sigmoid tasks: binary, multi-label), so the first predictions already equal
    the prior. Without it, on an imbalanced split the first steps of Adam spend every weight
    of the head on lowering the positive score for all samples, in proportion to each
    sample's (non-negative) pooled features: the score then falls with image intensity and
    ranks the classes backwards (test AUC < 0.5) until many more steps undo it.
    """
    from trainables.metrics import BINARY, MULTI_LABEL
    from trainables.tasks import SEGMENTATION

    if task == SEGMENTATION:
        raise ConfigError("--head-bias prior is for classification tasks, not segmentation", "head_bias")
    heads = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not heads or heads[-1].bias is None:
        raise ConfigError("--head-bias prior needs a network that ends in a linear layer with a bias", "head_bias")
    head = heads[-1]
    y = torch.as_tensor(labels).reshape(len(labels), -1).float()
    eps = 1.0 / (len(y) + 2)  # a class absent from the split keeps a finite bias
    if task in (BINARY, MULTI_LABEL):
        p = y.mean(0).clamp(eps, 1 - eps)
        bias = torch.log(p) - torch.log1p(-p)
    else:
        counts = torch.bincount(y[:, 0].long(), minlength=head.out_features).float()
        bias = torch.log((counts / counts.sum()).clamp_min(eps))
    if bias.numel() != head.out_features:
        raise ConfigError(f"the last linear layer has {head.out_features} outputs but the labels give "
                          f"{bias.numel()} priors", "head_bias")
    with torch.no_grad():
        head.bias.copy_(bias.to(head.bias))
    return head
