"""Synchronised BatchNorm for multi-process training: BatchNorm over the global batch."""

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from reid.utils import distributed


class CpuSyncBatchNorm(_BatchNorm):
    """SyncBatchNorm for CPU processes (gloo), where ``torch.nn.SyncBatchNorm`` refuses
    to run.

    In training with several ranks, each rank's count, mean and variance per channel
    are all-gathered with their gradient and combined exactly (the parallel variance
    formula), so the normalisation, its gradient and the running statistics are those
    of one BatchNorm over the whole global batch, up to floating-point rounding.
    Otherwise it is a plain BatchNorm. Parameters and buffers are BatchNorm's, so state
    dicts load both ways.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input (B, C, ...), got {input.dim()}-D")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """Normalises ``(B, C, ...)``; returns the same shape."""
        if not self.training or distributed.world_size() == 1:
            return super().forward(input)
        dims = [0, *range(2, input.dim())]
        channels = input.size(1)
        local = torch.cat(
            [
                input.mean(dims),
                input.var(dims, unbiased=False),
                input.new_tensor([input.numel() // channels]),
            ]
        )
        gathered = distributed.all_gather_with_grad(local[None])  # (W, 2C + 1)
        means, variances = gathered[:, :channels], gathered[:, channels : 2 * channels]
        counts = gathered[:, -1:].detach()
        total = counts.sum()
        mean = (counts * means).sum(0) / total
        var = (counts * (variances + (means - mean) ** 2)).sum(0) / total
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            momentum = self.momentum
            if momentum is None:  # a cumulative average, as in torch's BatchNorm
                momentum = 1.0 / float(self.num_batches_tracked)
            with torch.no_grad():
                self.running_mean.lerp_(mean, momentum)
                self.running_var.lerp_(var * total / (total - 1), momentum)
        shape = (1, channels) + (1,) * (input.dim() - 2)
        out = (input - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Replaces every BatchNorm layer in ``module`` by a synchronised one, in place.

    On CUDA that is ``torch.nn.SyncBatchNorm``; on the CPU :class:`CpuSyncBatchNorm`.
    The new layers hold the very same parameter and buffer tensors, so an optimizer
    built before the conversion still steps them.

    Returns:
        ``module``, or its replacement if it is itself a BatchNorm layer.
    """
    if device.type != "cpu":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if isinstance(module, _BatchNorm) and not isinstance(module, CpuSyncBatchNorm):
        converted = CpuSyncBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine,
            module.track_running_stats,
        )  # fmt: skip
        for name, tensor in [*module.named_parameters(recurse=False), *module.named_buffers()]:
            setattr(converted, name, tensor)
        converted.train(module.training)
        return converted
    for name, child in module.named_children():
        module.add_module(name, convert_sync_batchnorm(child, device))
    return module
