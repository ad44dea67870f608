"""The loss-term registry: name -> ``factory(cfg, num_classes, feat_dim, weight) -> term``.

A term is an ``nn.Module`` mapping ``(inputs, pids)`` to a scalar. It declares, as
class attributes, what :class:`reid.losses.ReidLoss` needs to know about it:

- ``input``: the model output it reads: ``"logits"`` (classifier scores), ``"feat"``
  (the pooled feature before the BNNeck) or ``"neck_feat"`` (after it);
- ``pairwise``: it compares samples within the batch (mining), so under torchrun it
  sees the whole global batch, all-gathered;
- ``own_lr``: None when its parameters (if any) train with the model's optimizer, else
  the learning rate of their own plain SGD (center loss).

Optionally, after each call, ``diagnostics``: detached scalars to log, by name; a term
that classifies puts its batch accuracy there as ``acc``. The built-in terms decorate
their ``forward`` with :func:`reid.losses.precision.float32_forward`, so that they
compute in float32 under mixed precision; a plugin term should too.

Add a term by registering a factory, e.g. from a module listed in ``IMPORTS``.
"""

from collections.abc import Callable

from torch import nn
from yacs.config import CfgNode

from reid.registry import Registry

INPUTS = ("logits", "feat", "neck_feat")

LOSSES: Registry[Callable[[CfgNode, int, int, float], nn.Module]] = Registry("loss")
