"""Non-local block (Wang et al., "Non-local Neural Networks", CVPR 2018), the one FastReID's
SBS recipe inserts into ResNet stages (``WITH_NL``)."""

import torch
from torch import nn


class NonLocalBlock(nn.Module):
    """Dot-product non-local block with a residual connection.

    Every position of the map gathers the features of all positions, weighted by the
    dot product of their embeddings. For the ``N = H * W`` positions ``x_i``:

    ``z_i = x_i + BN(W y_i)``, ``y_i = sum_j (theta(x_i) . phi(x_j)) / N * g(x_j)``

    with ``theta``, ``phi``, ``g`` 1x1 convolutions to ``channels // reduction`` channels
    and ``W`` a 1x1 convolution back to ``channels``. The paper's dot-product
    instantiation (pairwise weights divided by ``N``, no softmax), as FastReID uses it;
    the paper finds it on par with the embedded-Gaussian (softmax) one.

    The BatchNorm's scale and shift start at zero, so a new block is exactly the identity:
    inserted into a pretrained network it leaves the network's output unchanged until
    training moves them.

    Args:
        channels: channels ``C`` of the input and output.
        reduction: ``C`` over the embedding channels (2 in the paper and FastReID).
    """

    def __init__(self, channels: int, reduction: int = 2) -> None:
        super().__init__()
        inner = channels // reduction
        self.theta = nn.Conv2d(channels, inner, kernel_size=1)
        self.phi = nn.Conv2d(channels, inner, kernel_size=1)
        self.g = nn.Conv2d(channels, inner, kernel_size=1)
        self.out = nn.Conv2d(inner, channels, kernel_size=1)
        self.bn = nn.BatchNorm2d(channels)
        nn.init.zeros_(self.bn.weight)
        nn.init.zeros_(self.bn.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Maps ``(B, C, H, W)`` to the same shape."""
        batch, _, height, width = x.shape
        theta = self.theta(x).flatten(2)  # (B, C', N)
        phi = self.phi(x).flatten(2)
        g = self.g(x).flatten(2)
        affinity = theta.transpose(1, 2) @ phi / (height * width)  # (B, N, N)
        gathered = (g @ affinity.transpose(1, 2)).view(batch, -1, height, width)
        return x + self.bn(self.out(gathered))
