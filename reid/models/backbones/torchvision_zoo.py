"""Any torchvision classification model as a backbone: ``MODEL.BACKBONE torchvision/<name>``.

The model is cut before its global pooling with torchvision's own feature extraction
(an FX graph of the layers that compute the feature map), so the backbone keeps
torchvision's parameter names and its ImageNet weights load unchanged. Models that
pool a class token instead of a feature map (ViT) or whose head is not a global
pooling (SqueezeNet, MaxViT) are refused with a message.
"""

import difflib
import functools
from collections.abc import Callable

import torchvision
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

from reid.errors import ReidError, UnknownNameError
from reid.models.backbones import BACKBONES
from reid.models.backbones.last_stride import probe, remove_last_downsampling

PREFIX = "torchvision/"
# Graph nodes that pool the final map to a vector (module or functional form).
_POOLING_NODES = ("avgpool", "mean", "adaptive_avg_pool2d")


def classification_models() -> list[str]:
    """Names of torchvision's classification models."""
    return torchvision.models.list_models(module=torchvision.models)


def resolve(model_name: str) -> Callable[..., nn.Module]:
    """The backbone factory ``(last_stride=1) -> nn.Module`` of ``torchvision/<model_name>``."""
    models = classification_models()
    if model_name not in models:
        close = difflib.get_close_matches(model_name, models, n=3)
        hint = f"; did you mean {', '.join(PREFIX + name for name in close)}?" if close else ""
        raise UnknownNameError(
            f"unknown backbone {PREFIX + model_name!r}: torchvision has no classification "
            f"model {model_name!r}{hint}"
        )
    return functools.partial(torchvision_backbone, model_name)


def torchvision_backbone(model_name: str, last_stride: int = 1) -> nn.Module:
    """A torchvision model up to its final feature map ``(B, C, h, w)``.

    Args:
        model_name: a name in ``torchvision.models.list_models()``.
        last_stride: 2 keeps the model as it is; 1 removes the stride of its last
            downsampling (the convolutions or poolings that halve the map for the last
            time), doubling the final map as ResNet's last stride 1 does.

    Returns:
        An ``fx.GraphModule`` with ``out_channels`` set, in training mode.

    Raises:
        ReidError: the model has no spatial feature map before a global pooling, or
            no last downsampling to remove for ``last_stride`` 1.
    """
    if last_stride not in (1, 2):
        raise ReidError(f"last_stride must be 1 or 2, got {last_stride!r}")
    # weights=None: weights are only ever loaded from local files (reid.models.pretrained).
    net = torchvision.models.get_model(model_name, weights=None).eval()
    _, nodes = get_graph_node_names(net)
    pools = [i for i, node in enumerate(nodes) if node.split(".")[-1] in _POOLING_NODES]
    if not pools:
        raise ReidError(
            f"{PREFIX}{model_name} has no global pooling of a feature map before its "
            "classifier (it pools tokens or classifies a map); choose a convolutional model"
        )
    body = create_feature_extractor(net, return_nodes={nodes[pools[0] - 1]: "map"})
    for graph in (body.train_graph, body.eval_graph):  # one graph per mode
        output = next(node for node in graph.nodes if node.op == "output")
        output.args = (output.args[0]["map"],)  # return the map itself, not a dict
    body.recompile()
    size = probe(body)
    if last_stride == 1:
        remove_last_downsampling(body, f"{PREFIX}{model_name}", size)
    body.out_channels = size[0]
    return body.train()


BACKBONES.register_family(PREFIX, resolve)
