"""Any PyTorch Image Models (timm) model as a backbone: ``MODEL.BACKBONE timm/<name>``.

``<name>`` is a timm model name, optionally with its pretrained tag
(``timm/vit_base_patch16_clip_224.openai``). Two kinds are supported:

- convolutional models (ResNets, ConvNeXt, EfficientNet, ...): the unpooled map timm
  gives once its classifier and pooling are removed, ``(B, C, h, w)``, with last stride
  1 where the model has a last downsampling to remove, as for ``torchvision/<name>``;
- vision transformers with timm's ViT interface (ViT, DeiT, CLIP and DINOv2 encoders,
  EVA): built for the ReID image size, the position embedding resampled from the
  trained grid; the global feature, after the final norm, is the class token or the
  mean of the patch tokens, returned as ``(B, C, 1, 1)`` so the head's pooling is the
  identity. Overlapping patches (TransReID) shorten the patch embedding's stride.

timm is optional and imported only when such a backbone is asked for. Its parameter
names are kept under ``model.``, and weights come from timm's own cache or download
(:meth:`TimmBackbone.load_library_weights`).
"""

import difflib
import functools
import logging
import math
from collections.abc import Callable, Mapping
from types import ModuleType

import torch
from torch import nn

from reid.errors import ReidError, UnknownNameError
from reid.models.backbones import BACKBONES
from reid.models.backbones.last_stride import PROBE_SIZE, probe, remove_last_downsampling

logger = logging.getLogger(__name__)

PREFIX = "timm/"
INSTALL_HINT = 'pip install "reidkit[timm]"'
VIT_POOLS = ("token", "mean")
# How many pretrained tags an unknown-tag error lists.
_SHOWN_TAGS = 5


def import_timm() -> ModuleType:
    """The ``timm`` module; its absence is a one-line error naming the extra to install."""
    try:
        import timm
    except ImportError as err:
        raise ReidError(
            f"the {PREFIX}<name> backbones need PyTorch Image Models: {INSTALL_HINT}"
        ) from err
    return timm


def resolve(model_name: str) -> Callable[..., nn.Module]:
    """The backbone factory of ``timm/<model_name>`` (see :func:`timm_backbone`), with
    ``pixel_stats`` set from timm's pretrained config when the model has one.

    Raises:
        UnknownNameError: timm has no such model, or the model no such pretrained tag.
        ReidError: timm is not installed.
    """
    timm = import_timm()
    if not timm.is_model(model_name):
        close = difflib.get_close_matches(model_name, timm.list_models(), n=3)
        hint = f"; did you mean {', '.join(PREFIX + name for name in close)}?" if close else ""
        raise UnknownNameError(
            f"unknown backbone {PREFIX + model_name!r}: timm has no model {model_name!r}{hint}"
        )
    try:
        pretrained_cfg = timm.models.get_pretrained_cfg(model_name)
    except RuntimeError as err:  # a tag the architecture does not have
        arch = model_name.split(".")[0]
        tags = [PREFIX + name for name in timm.list_pretrained(f"{arch}.*")]
        shown = ", ".join(tags[:_SHOWN_TAGS]) or "none"
        if len(tags) > _SHOWN_TAGS:
            shown += f", ... ({len(tags) - _SHOWN_TAGS} more: timm.list_pretrained({arch!r}))"
        raise UnknownNameError(
            f"unknown backbone {PREFIX + model_name!r}: timm has no such pretrained tag "
            f"(available: {shown})"
        ) from err
    factory = functools.partial(timm_backbone, model_name)
    if pretrained_cfg is not None:
        factory.pixel_stats = (tuple(pretrained_cfg.mean), tuple(pretrained_cfg.std))
    return factory


def timm_backbone(
    model_name: str,
    last_stride: int = 1,
    img_size: tuple[int, int] = (256, 128),
    vit_pool: str = "token",
    vit_stride: int = 0,
    drop_path: float = 0.0,
) -> "TimmBackbone":
    """A timm model as a backbone, with random weights (see ``load_library_weights``).

    Args:
        model_name: a timm model name, with or without pretrained tag.
        last_stride: convolutional models: 1 removes the stride of the last downsampling
            (doubling the final map), 2 keeps the model as it is. Ignored by ViTs.
        img_size: ViTs: the ``(H, W)`` they are built for (position embedding grid);
            inputs must have this size. Ignored by convolutional models.
        vit_pool: ViTs: the global feature, ``"token"`` (class token) or ``"mean"``
            (mean of the patch tokens).
        vit_stride: ViTs: the patch embedding's stride, 0 for the patch size; smaller
            gives overlapping patches (TransReID uses 12 with 16-pixel patches).
        drop_path: stochastic depth rate (timm's ``drop_path_rate``).

    Returns:
        A :class:`TimmBackbone` (convolutional) or :class:`TimmTokenBackbone`, in
        training mode, mapping ``(B, 3, H, W)`` to ``(B, C, h, w)`` or ``(B, C, 1, 1)``.

    Raises:
        ReidError: an option the model cannot take, or a model of neither kind.
    """
    name = PREFIX + model_name
    if not 0.0 <= drop_path < 1.0:
        raise ReidError(f"drop_path must be in [0, 1), got {drop_path!r}")
    timm = import_timm()
    # The classifier goes, and its dropout (drop_rate) with it.
    kwargs = {"num_classes": 0, "drop_rate": 0.0}
    if drop_path:
        kwargs["drop_path_rate"] = drop_path
    try:
        model = timm.create_model(model_name, pretrained=False, **kwargs)
    except TypeError as err:
        if drop_path and "drop_path_rate" in str(err):
            raise ReidError(f"{name} has no drop path; leave MODEL.DROP_PATH at 0.0") from err
        raise ReidError(f"cannot build {name} without a classifier: {_line(err)}") from err
    if hasattr(model, "patch_embed") and hasattr(model, "num_prefix_tokens"):
        return TimmTokenBackbone(model, name, img_size, vit_pool, vit_stride).train()
    for key, value, default in (("VIT_POOL", vit_pool, "token"), ("VIT_STRIDE", vit_stride, 0)):
        if value != default:
            raise ReidError(
                f"MODEL.{key} {value} applies to vision transformers; {name} is not one, "
                f"leave it at {default}"
            )
    return TimmBackbone(model, name, last_stride).train()


def _line(err: Exception) -> str:
    """The first line of an exception's message, for one-line errors."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


class TimmBackbone(nn.Module):
    """A convolutional timm model without its classifier and pooling:
    ``(B, 3, H, W) -> (B, C, h, w)``.

    Args:
        model: a timm model created with ``num_classes=0``.
        name: its backbone name (``timm/<name>``), for messages.
        last_stride: 1 removes the stride of the last downsampling, 2 keeps it.

    Attributes:
        model: the timm model (its parameter names under ``model.``).
        out_channels: ``C``.
    """

    pooled = False

    def __init__(self, model: nn.Module, name: str, last_stride: int = 1) -> None:
        super().__init__()
        if last_stride not in (1, 2):
            raise ReidError(f"last_stride must be 1 or 2, got {last_stride!r}")
        self.model = model
        self.name = name
        # timm's documented way to unpooled features: what remains is all used.
        model.reset_classifier(0, "")
        try:
            size = probe(self)
        except ReidError as err:
            raise ReidError(
                f"{name} gives no (B, C, h, w) feature map ({err}); choose a convolutional "
                "model or a vision transformer"
            ) from err
        except Exception as err:  # timm models that refuse the probe size, in their words
            size_text = f"{PROBE_SIZE[0]}x{PROBE_SIZE[1]}"
            raise ReidError(
                f"{name} cannot run on {size_text} images ({_line(err)}); choose a "
                "convolutional model or a vision transformer"
            ) from err
        if size[0] != getattr(model, "num_features", size[0]):
            raise ReidError(
                f"{name} gives features of shape {size} that are not a (C, h, w) map; "
                "choose a convolutional model or a vision transformer"
            )
        if last_stride == 1:
            remove_last_downsampling(self, name, size)
        self.out_channels = size[0]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` images to the ``(B, C, h, w)`` map."""
        return self.model(images)

    def load_library_weights(self) -> None:
        """Loads timm's pretrained weights of this model, through timm's own mechanism:
        its Hugging Face Hub cache, downloading into it when online.

        Raises:
            ReidError: the weights are neither cached nor downloadable; one line naming
                the repository and the cache folder, or MODEL.PRETRAIN_PATH.
        """
        timm = import_timm()
        model_name = self.name.removeprefix(PREFIX)
        try:
            source = timm.create_model(model_name, pretrained=True, num_classes=0)
        except Exception as err:  # offline, not cached, no weights: said in one line
            raise ReidError(self._missing_weights(timm, err)) from err
        state = self.adapt_state_dict(source.state_dict())
        own = self.state_dict()
        missing = [k for k in own if k not in state]
        unused = [k for k in state if k not in own]
        self.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
        logger.info("loaded timm's pretrained weights of %s", self.name)
        if missing or unused:
            logger.warning(
                "%s: %d tensors left as initialised (%s), %d pretrained ones unused (%s)",
                self.name,
                len(missing),
                ", ".join(missing[:5]),
                len(unused),
                ", ".join(unused[:5]),
            )

    def _missing_weights(self, timm: ModuleType, err: Exception) -> str:
        model_name = self.name.removeprefix(PREFIX)
        cfg = timm.models.get_pretrained_cfg(model_name)
        alternative = "or set MODEL.PRETRAIN_PATH to a local state dict of this timm model"
        if cfg is None or not (cfg.hf_hub_id or cfg.url):
            return f"timm has no pretrained weights for {self.name}; {alternative}"
        if cfg.hf_hub_id:
            from huggingface_hub import constants

            filename = cfg.hf_hub_filename or "model.safetensors"
            where = (
                f"{filename} of the Hugging Face repo {cfg.hf_hub_id} is not in the cache "
                f"{constants.HF_HUB_CACHE} and could not be downloaded ({type(err).__name__}): "
                f"run `hf download {cfg.hf_hub_id}` with a connection (HF_HUB_CACHE sets "
                "the folder)"
            )
        else:
            where = (
                f"{cfg.url} is not in {torch.hub.get_dir()}/checkpoints and could not be "
                f"downloaded ({type(err).__name__}): put that file there"
            )
        return f"no pretrained weights for {self.name}: {where}, {alternative}"

    def adapt_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A timm state dict of this model (``torch.save(model.state_dict())``, at any
        trained size) made loadable here: keys put under ``model.``, the classifier's
        dropped, and (ViTs) the position embedding resampled to this grid. Keys that are
        already this module's pass through; others are kept for the caller to report.

        Args:
            state_dict: name -> tensor, timm's names or this module's.

        Returns:
            name -> tensor with this module's names where they exist.
        """
        own = self.state_dict()
        classifier = self.model.pretrained_cfg.get("classifier") or ()
        classifier = (classifier,) if isinstance(classifier, str) else tuple(classifier)
        adapted: dict[str, torch.Tensor] = {}
        for key, tensor in state_dict.items():
            if key not in own and f"model.{key}" in own:
                key = f"model.{key}"
            elif key not in own and key.startswith(tuple(f"{c}." for c in classifier)):
                continue  # the ImageNet classifier, removed here
            adapted[key] = tensor
        return adapted


class TimmTokenBackbone(TimmBackbone):
    """A timm vision transformer pooled to one feature: ``(B, 3, H, W) -> (B, C, 1, 1)``.

    The feature, after the model's final norm, is the class token (``"token"``) or the
    mean of the patch tokens (``"mean"``, register and distillation tokens left out).

    Args:
        model: a timm model with the ViT interface (``patch_embed``,
            ``num_prefix_tokens``, ``forward_features`` giving ``(B, N, C)``), created with
            ``num_classes=0``.
        name: its backbone name, for messages.
        img_size: ``(H, W)`` the model is built for.
        vit_pool: ``"token"`` or ``"mean"``.
        vit_stride: patch embedding stride, 0 for the patch size.

    Attributes:
        pooled: True: the map is ``1x1``, so the head's pooling must be the identity.
        grid_size: ``(h, w)`` of the patch grid.
    """

    pooled = True

    def __init__(
        self,
        model: nn.Module,
        name: str,
        img_size: tuple[int, int] = (256, 128),
        vit_pool: str = "token",
        vit_stride: int = 0,
    ) -> None:
        nn.Module.__init__(self)
        if vit_pool not in VIT_POOLS:
            raise ReidError(f"vit_pool must be one of {VIT_POOLS}, got {vit_pool!r}")
        if vit_pool == "token" and getattr(model, "cls_token", None) is None:
            raise ReidError(f"{name} has no class token; use MODEL.VIT_POOL mean")
        self.model = model
        self.name = name
        self.vit_pool = vit_pool
        # Drops an attention-pooling head too; the pooling is done in forward.
        model.reset_classifier(0, "token" if vit_pool == "token" else "avg")
        img_size = tuple(int(s) for s in img_size)
        if tuple(model.patch_embed.img_size) != img_size:
            if not hasattr(model, "set_input_size"):
                raise ReidError(f"{name} cannot be resized to {img_size[0]}x{img_size[1]}")
            model.set_input_size(img_size=img_size)  # resamples the position embedding
        patch = model.patch_embed.patch_size[0]
        if vit_stride and vit_stride != patch:
            self._set_patch_stride(vit_stride)
        self.img_size = img_size
        self.grid_size = tuple(model.patch_embed.grid_size)
        self.out_channels = model.num_features

    def _set_patch_stride(self, stride: int) -> None:
        """Overlapping patches (TransReID, He et al. 2021): the patch embedding's stride
        becomes ``stride`` and the position embedding is resampled to the larger grid."""
        from timm.layers import resample_abs_pos_embed
        from timm.models import VisionTransformer

        model, embed = self.model, self.model.patch_embed
        patch = embed.patch_size
        if not isinstance(model, VisionTransformer) or model.pos_embed is None:
            raise ReidError(
                f"MODEL.VIT_STRIDE is supported for timm's VisionTransformer models with an "
                f"absolute position embedding; {self.name} is not one, leave it at 0"
            )
        if not 0 < stride <= min(patch):
            raise ReidError(
                f"MODEL.VIT_STRIDE must be in [1, {min(patch)}] for {self.name} "
                f"({patch[0]}-pixel patches), got {stride}"
            )
        old_grid = tuple(embed.grid_size)
        grid = tuple((s - p) // stride + 1 for s, p in zip(embed.img_size, patch, strict=True))
        embed.proj.stride = (stride, stride)
        embed.grid_size, embed.num_patches = grid, grid[0] * grid[1]
        model.pos_embed = nn.Parameter(
            resample_abs_pos_embed(
                model.pos_embed.detach(),
                new_size=grid,
                old_size=old_grid,
                num_prefix_tokens=self._embedded_prefix_tokens(),
            )
        )

    def _embedded_prefix_tokens(self) -> int:
        """Prefix (class, register) tokens that have a position embedding row."""
        return 0 if getattr(self.model, "no_embed_class", False) else self.model.num_prefix_tokens

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` images at ``img_size`` to the ``(B, C, 1, 1)`` global feature."""
        if tuple(images.shape[-2:]) != self.img_size:
            raise ReidError(
                f"{self.name} is built for {self.img_size[0]}x{self.img_size[1]} images "
                f"(INPUT.SIZE_TRAIN), got {images.shape[-2]}x{images.shape[-1]}; set "
                "INPUT.SIZE_TEST to the same size"
            )
        tokens = self.model.forward_features(images)  # (B, N, C), after the final norm
        if self.vit_pool == "token":
            feat = tokens[:, 0]
        else:
            feat = tokens[:, self.model.num_prefix_tokens :].mean(dim=1)
        # Models that pool before their last norm keep it as fc_norm (Identity otherwise).
        fc_norm = getattr(self.model, "fc_norm", None)
        if fc_norm is not None:
            feat = fc_norm(feat)
        return feat[:, :, None, None]

    def adapt_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """See :meth:`TimmBackbone.adapt_state_dict`; the position embedding of a square
        trained grid is resampled (bicubic, as timm does) to this model's grid."""
        from timm.layers import resample_abs_pos_embed

        adapted = super().adapt_state_dict(state_dict)
        target = self.model.pos_embed
        source = adapted.get("model.pos_embed")
        if source is None or target is None or source.shape == target.shape:
            return adapted
        prefix = self._embedded_prefix_tokens()
        positions = source.shape[1] - prefix
        side = math.isqrt(positions)
        if source.dim() != 3 or side * side != positions or source.shape[2] != target.shape[2]:
            raise ReidError(
                f"cannot resample the position embedding {tuple(source.shape)} of the weights "
                f"to {self.name}'s {tuple(target.shape)}: expected a square grid of "
                f"{target.shape[2]}-dim positions"
            )
        adapted["model.pos_embed"] = resample_abs_pos_embed(
            source, new_size=self.grid_size, old_size=(side, side), num_prefix_tokens=prefix
        )
        logger.info(
            "%s: position embedding resampled from %dx%d to %dx%d",
            self.name,
            side,
            side,
            *self.grid_size,
        )
        return adapted


BACKBONES.register_family(PREFIX, resolve)
