"""ImageTokenizer: a convolutional RQ-VAE that turns RGB images into grids of residual code ids.

The encoder and decoder are the `Encoder` and `Decoder` of diffusers' `VQModel`
(`diffusers.models.autoencoders.vae`), and vqkit's `ResidualVQ` with one shared codebook sits
between them, the RQ-VAE design that `vqkit.quantizers.residual` describes::

    tok = ImageTokenizer.from_pretrained("image-rqvae-64")    # or vqkit.load("image-rqvae-64")
    codes = tok.encode(images)         # long (B, depth, H / f, W / f)
    images = tok.decode(codes)         # float (B, 3, H, W) in [0, 1]
    coarse = tok.decode(codes[:, :2])  # the first two residual levels only

`f` is `tok.downsample_factor`. Because `ResidualVQ` trains every prefix of the residual
levels to approximate the latent, one model decodes at every depth from 1 to `tok.depth`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from diffusers.models.autoencoders.vae import Decoder, Encoder
from torch import Tensor, nn
from torch.nn import functional as F

from vqkit._modules import eval_mode
from vqkit.hub import VQKitModelMixin
from vqkit.quantizers import QuantizerOutput, ResidualVQ
from vqkit.tokenizers.image_inputs import MAX_IMAGE_SIDE, ImageInput, prepare_images

if TYPE_CHECKING:
    from diffusers import VQModel

logger = logging.getLogger(__name__)


@dataclass
class ImageTokenizerOutput:
    """Result of the training forward pass `ImageTokenizer(images)`.

    Attributes:
        reconstruction: float (B, 3, H, W) on the [0, 1] scale of the input, not clamped, so
            that the losses see the decoder's raw output.
        quantizer: the `ResidualVQ` output. Its `indices` are (B, H / f, W / f, depth).
        loss: scalar, `l1_weight * l1_loss + mse_weight * mse_loss + quantizer_loss`.
        l1_loss: scalar mean absolute error between reconstruction and input.
        mse_loss: scalar mean squared error between reconstruction and input.
        quantizer_loss: scalar, `quantizer.loss` (the weighted commitment loss over all
            prefix sums, plus the codebook loss when the codes train by gradient).
    """

    reconstruction: Tensor
    quantizer: QuantizerOutput
    loss: Tensor
    l1_loss: Tensor
    mse_loss: Tensor
    quantizer_loss: Tensor


class ImageTokenizer(nn.Module, VQKitModelMixin):
    """Residual-quantized convolutional autoencoder for RGB images.

    The defaults are the "small" model: about 1.7M parameters, downsample factor 4, four
    residual levels over one shared codebook of 512 codes.

    Args:
        block_out_channels: channels of the encoder blocks, and in reverse of the decoder
            blocks. Each block after the first halves the resolution, so the downsample factor
            is `2 ** (len(block_out_channels) - 1)`.
        layers_per_block: ResNet layers per encoder block; the decoder uses one more, as in
            diffusers' `VQModel`.
        norm_num_groups: GroupNorm groups; must divide every entry of `block_out_channels`.
        latent_channels: channels of the encoder output and decoder input.
        codebook_size: codes K in the shared codebook.
        depth: residual levels D, so D codes per latent position.
        normalized_lookup: quantize in a low-dimensional, l2-normalised lookup space instead
            of the latent space. A 1x1 convolution projects the latents to `lookup_dim`
            channels, and each vector is l2-normalised before `ResidualVQ` quantizes it. The
            first level then matches directions on the unit sphere, and the later levels match
            the residuals. A second 1x1 convolution maps the quantized sum back to
            `latent_channels` for the decoder. Off by default. It makes the code search
            cheaper, but its effect on reconstruction quality has not been measured here.
        lookup_dim: channels of the lookup space when `normalized_lookup` is on; ignored otherwise.
        commitment_weight: weight of the commitment loss inside `ResidualVQ`.
        ema_decay: EMA decay of the codebook updates, or None to train the codes by gradient.
        dead_code_threshold: restart a code after this many training steps without use; None
            disables restarts.
        mid_block_attention: add the self-attention layer of diffusers' mid block to the
            encoder and decoder. Off by default, because its cost grows with the square of the
            number of latent positions and the model is applied to whole photos. A 400 x 600
            photo has 15,000 latent positions at factor 4. Without attention, each code also
            depends only on a local image patch.
        l1_weight: weight of the L1 reconstruction loss.
        mse_weight: weight of the MSE reconstruction loss.
        seed: seed of the codebook's k-means initialisation and dead-code restarts; None
            follows `torch.manual_seed`.
    """

    def __init__(
        self,
        block_out_channels: Sequence[int] = (32, 64, 96),
        layers_per_block: int = 1,
        norm_num_groups: int = 16,
        latent_channels: int = 64,
        codebook_size: int = 512,
        depth: int = 4,
        normalized_lookup: bool = False,
        lookup_dim: int = 8,
        commitment_weight: float = 0.25,
        ema_decay: float | None = 0.99,
        dead_code_threshold: int | None = 100,
        mid_block_attention: bool = False,
        l1_weight: float = 1.0,
        mse_weight: float = 1.0,
        seed: int | None = None,
    ):
        super().__init__()
        block_out_channels = tuple(int(c) for c in block_out_channels)
        if not block_out_channels:
            raise ValueError("block_out_channels is empty: give at least one channel count, e.g. (32, 64, 96)")
        not_divisible = [c for c in block_out_channels if c % norm_num_groups]
        if not_divisible:
            raise ValueError(
                f"norm_num_groups={norm_num_groups} must divide every entry of block_out_channels, "
                f"but not {not_divisible}"
            )

        self.codebook_size = codebook_size
        self.depth = depth
        self.downsample_factor = 2 ** (len(block_out_channels) - 1)
        self.block_out_channels = block_out_channels
        self.layers_per_block = layers_per_block
        self.norm_num_groups = norm_num_groups
        self.latent_channels = latent_channels
        self.normalized_lookup = normalized_lookup
        self.mid_block_attention = mid_block_attention
        self.l1_weight = l1_weight
        self.mse_weight = mse_weight
        self._warned_padding: set[tuple[int, int]] = set()

        num_blocks = len(block_out_channels)
        self.encoder = Encoder(
            in_channels=3,
            out_channels=latent_channels,
            down_block_types=("DownEncoderBlock2D",) * num_blocks,
            block_out_channels=block_out_channels,
            layers_per_block=layers_per_block,
            norm_num_groups=norm_num_groups,
            double_z=False,
            mid_block_add_attention=mid_block_attention,
        )
        self.decoder = Decoder(
            in_channels=latent_channels,
            out_channels=3,
            up_block_types=("UpDecoderBlock2D",) * num_blocks,
            block_out_channels=block_out_channels,
            layers_per_block=layers_per_block,
            norm_num_groups=norm_num_groups,
            mid_block_add_attention=mid_block_attention,
        )

        quantizer_dim = lookup_dim if normalized_lookup else latent_channels
        if normalized_lookup:
            self.pre_lookup = nn.Conv2d(latent_channels, lookup_dim, kernel_size=1)
            self.post_lookup = nn.Conv2d(lookup_dim, latent_channels, kernel_size=1)
        else:
            self.pre_lookup = nn.Identity()
            self.post_lookup = nn.Identity()
        self.quantizer = ResidualVQ(
            quantizer_dim,
            codebook_size,
            depth=depth,
            shared_codebook=True,
            ema_decay=ema_decay,
            commitment_weight=commitment_weight,
            dead_code_threshold=dead_code_threshold,
            channel_first=True,
            seed=seed,
        )

    @property
    def device(self) -> torch.device:
        """The device of the model's parameters."""
        return next(self.parameters()).device

    # ---- public contract ------------------------------------------------------------------

    @torch.no_grad()
    def encode(self, images: ImageInput) -> Tensor:
        """Encode images into long codes of shape (B, depth, ceil(H / f), ceil(W / f)).

        `images` may be a float (B, C, H, W) tensor in [0, 1], a uint8 (B, C, H, W) tensor or
        a uint8 (H, W, C) tensor. It may also be a channel-last numpy array, a PIL image, or a
        list of same-sized numpy or PIL images, as `prepare_images` lists. Grayscale and RGBA
        inputs are converted to RGB.

        Sides that are not multiples of `downsample_factor` are reflect-padded up to the next
        multiple, with a logged warning. Pass the original size to `decode(image_size=...)`
        to crop the decoded images back. The codebook is never updated, even in training mode.

        Raises ValueError for an unsupported type, layout or dtype, float values outside
        [0, 1] by more than `RANGE_TOLERANCE`, non-finite values, and sides over
        `MAX_IMAGE_SIDE` pixels.
        """
        x = prepare_images(images).to(self.device)
        x, _ = self._pad(x)
        if x.shape[0] == 0:
            f = self.downsample_factor
            return torch.empty((0, self.depth, x.shape[2] // f, x.shape[3] // f), dtype=torch.long, device=x.device)

        with eval_mode(self.quantizer):
            output = self.quantizer(self._lookup_latents(x))
        return output.indices.permute(0, 3, 1, 2).contiguous()

    @torch.no_grad()
    def decode(self, codes: Tensor, image_size: tuple[int, int] | None = None) -> Tensor:
        """Decode long codes (B, d, h, w), with 1 <= d <= depth, into float (B, 3, H, W) images in [0, 1].

        Only the first d residual levels are summed, so `decode(codes[:, :d])` is the depth-d
        reconstruction. The output is (h * f, w * f) pixels, cropped to `image_size` = (H, W)
        when given (the size of the image before `encode` padded it).

        Raises ValueError when `codes` is not an integer tensor of that shape or d is out of
        range. It also raises when a code is outside [0, codebook_size), when the output
        would exceed `MAX_IMAGE_SIDE` pixels, or when `image_size` is larger than the
        decoded size.
        """
        self._check_codes(codes)
        f = self.downsample_factor
        height, width = codes.shape[2] * f, codes.shape[3] * f
        if image_size is not None:
            image_size = _check_image_size(image_size, (height, width), f)

        codes = codes.to(self.device, torch.long)
        quantized = self.quantizer.codes_from_indices(codes.permute(0, 2, 3, 1))
        images = self._decode_latents(quantized).clamp_(0.0, 1.0)
        if image_size is not None:
            images = images[:, :, : image_size[0], : image_size[1]]
        return images

    @torch.no_grad()
    def reconstruct(self, images: ImageInput, depth: int | None = None) -> Tensor:
        """Encode and decode `images` with the first `depth` levels (default: all), at the input size.

        Returns float (B, 3, H, W) in [0, 1]. Unlike `encode`, it pads sides that are not
        multiples of the downsample factor without a warning, because it crops them back.
        """
        x = prepare_images(images).to(self.device)
        if depth is None:
            depth = self.depth
        if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= self.depth:
            raise ValueError(f"depth must be an integer from 1 to {self.depth}, got {depth!r}")
        padded, size = self._pad(x, warn=False)
        if x.shape[0] == 0:
            return x
        with eval_mode(self.quantizer):
            codes = self.quantizer(self._lookup_latents(padded)).indices
        quantized = self.quantizer.codes_from_indices(codes[..., :depth])
        return self._decode_latents(quantized).clamp_(0.0, 1.0)[:, :, : size[0], : size[1]]

    def forward(self, images: ImageInput) -> ImageTokenizerOutput:
        """Run the training forward pass: encode, quantize (updating the codebook in training mode), decode, and compute the losses.

        Accepts the same inputs as `encode`. Padded sides are cropped from the reconstruction
        before the losses are computed.
        """
        x = prepare_images(images).to(self.device)
        if x.shape[0] == 0:
            raise ValueError("the training forward needs at least one image, got an empty batch")
        padded, size = self._pad(x)
        quantized = self.quantizer(self._lookup_latents(padded))
        reconstruction = self._decode_latents(quantized.quantized)[:, :, : size[0], : size[1]]

        l1_loss = F.l1_loss(reconstruction, x)
        mse_loss = F.mse_loss(reconstruction, x)
        loss = self.l1_weight * l1_loss + self.mse_weight * mse_loss + quantized.loss
        return ImageTokenizerOutput(
            reconstruction=reconstruction,
            quantizer=quantized,
            loss=loss,
            l1_loss=l1_loss,
            mse_loss=mse_loss,
            quantizer_loss=quantized.loss,
        )

    @torch.no_grad()
    def to_diffusers(self, depth: int = 1) -> VQModel:
        """Export the depth-1 tokenizer as a float32 diffusers `VQModel` on this model's device.

        The `VQModel` gets copies of the encoder and decoder weights and the level-1 codes of
        the shared codebook as its `quantize.embedding`. Its `quant_conv` and
        `post_quant_conv` are identity 1x1 convolutions. `VQModel` works on images in
        [-1, 1], so for float images `x` in [0, 1] whose sides are multiples of
        `downsample_factor`, `(vq(2 * x - 1).sample + 1) / 2`, clamped to [0, 1], matches
        `decode(encode(x)[:, :1])` to float rounding. The exception is a latent with two
        equally near codes, because `VQModel` searches with `torch.cdist` and vqkit with
        FAISS on the CPU. Code ids `ids` (B, h, w) decode with
        `vq.decode(vq.quantize.get_codebook_entry(ids.flatten(), (B, h, w, latent_channels)),
        force_not_quantize=True)`. `VQModel` does not pad, and its `scaling_factor` is set to
        1.0 because vqkit does not estimate the latent scale.

        Raises ValueError when `depth` is not 1, because `VQModel` has a single quantizer and
        cannot sum residual levels, and when `normalized_lookup` is on, because `VQModel`
        quantizes the `quant_conv` output without l2-normalising it.
        """
        from diffusers import VQModel

        if depth != 1:
            raise ValueError(
                f"to_diffusers(depth={depth!r}) requested, but diffusers' VQModel has one quantizer and "
                "cannot sum residual levels, so only depth=1 (the first level's codes) can be exported"
            )
        if self.normalized_lookup:
            raise ValueError(
                "this tokenizer uses normalized_lookup=True: it projects the latents with pre_lookup and "
                "l2-normalises them before the code search, but VQModel searches the quant_conv output "
                "without normalising it, so the layout cannot be mapped onto VQModel"
            )

        num_blocks = len(self.block_out_channels)
        vq = VQModel(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * num_blocks,
            up_block_types=("UpDecoderBlock2D",) * num_blocks,
            block_out_channels=self.block_out_channels,
            layers_per_block=self.layers_per_block,
            act_fn="silu",
            latent_channels=self.latent_channels,
            num_vq_embeddings=self.codebook_size,
            norm_num_groups=self.norm_num_groups,
            vq_embed_dim=self.latent_channels,
            scaling_factor=1.0,
            norm_type="group",
            mid_block_add_attention=self.mid_block_attention,
        ).to(self.device)

        vq.encoder.load_state_dict(self.encoder.state_dict())
        vq.decoder.load_state_dict(self.decoder.state_dict())
        identity = torch.eye(self.latent_channels, device=self.device)
        for conv in (vq.quant_conv, vq.post_quant_conv):
            conv.weight.copy_(identity[:, :, None, None])
            conv.bias.zero_()
        vq.quantize.embedding.weight.copy_(self.quantizer.codebook_at(0).weight)
        return vq.eval()

    # ---- internals ------------------------------------------------------------------------

    def _lookup_latents(self, x: Tensor) -> Tensor:
        """Return the quantizer input, (B, quantizer dim, h, w), for images in [0, 1]."""
        latents = self.pre_lookup(self.encoder(x * 2.0 - 1.0))
        if self.normalized_lookup:
            latents = F.normalize(latents, dim=1)
        return latents

    def _decode_latents(self, quantized: Tensor) -> Tensor:
        """Return the decoder output on the [0, 1] scale, not clamped."""
        return (self.decoder(self.post_lookup(quantized)) + 1.0) / 2.0

    def _pad(self, x: Tensor, warn: bool = True) -> tuple[Tensor, tuple[int, int]]:
        """Pad H and W up to multiples of the downsample factor; return the padded batch and the original (H, W)."""
        height, width = x.shape[2], x.shape[3]
        f = self.downsample_factor
        pad_bottom, pad_right = -height % f, -width % f
        if not pad_bottom and not pad_right:
            return x, (height, width)

        # Reflect padding needs the pad to be smaller than the side; tiny images replicate.
        mode = "reflect" if pad_bottom < height and pad_right < width else "replicate"
        if warn and (height, width) not in self._warned_padding:
            self._warned_padding.add((height, width))
            logger.warning(
                "image size %dx%d is not a multiple of the downsample factor %d: padding it to %dx%d "
                "(%s) for encoding. decode(codes, image_size=(%d, %d)) crops the output back.",
                height,
                width,
                f,
                height + pad_bottom,
                width + pad_right,
                mode,
                height,
                width,
            )
        if x.shape[0] == 0:
            return x.new_zeros((0, x.shape[1], height + pad_bottom, width + pad_right)), (height, width)
        return F.pad(x, (0, pad_right, 0, pad_bottom), mode=mode), (height, width)

    def _check_codes(self, codes: Tensor) -> None:
        if not isinstance(codes, Tensor):
            raise ValueError(f"codes must be a torch.Tensor of code ids, got {type(codes).__name__}")
        if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
            raise ValueError(f"codes must have an integer dtype, got {codes.dtype}; convert them with .long()")
        if codes.ndim != 4:
            raise ValueError(
                f"codes must have shape (B, depth, h, w), got {tuple(codes.shape)}; "
                "for the codes of one image use codes[None]"
            )
        levels = codes.shape[1]
        if not 1 <= levels <= self.depth:
            raise ValueError(f"codes have {levels} residual levels on axis 1, expected 1 to depth={self.depth}")
        f = self.downsample_factor
        largest = max(codes.shape[2], codes.shape[3]) * f
        if largest > MAX_IMAGE_SIDE:
            raise ValueError(
                f"codes of size {codes.shape[2]}x{codes.shape[3]} decode to a {largest}-pixel side, "
                f"over the limit of {MAX_IMAGE_SIDE} pixels"
            )
        if codes.numel() == 0:
            return
        low, high = int(codes.min()), int(codes.max())
        if low < 0 or high >= self.codebook_size:
            bad = low if low < 0 else high
            raise ValueError(
                f"codes contain {bad}, outside the valid range [0, {self.codebook_size - 1}] "
                f"of this tokenizer's {self.codebook_size}-code codebook"
            )


def load_image_tokenizer(name_or_path: str | os.PathLike[str], device: str | torch.device = "cpu") -> ImageTokenizer:
    """Load an `ImageTokenizer`, in eval mode, from a registered model name or a local checkpoint folder.

    Unlike `ImageTokenizer.from_pretrained`, it never treats the argument as a Hugging Face
    Hub repo id, so it never downloads. Raises FileNotFoundError when the argument is neither
    a registered name nor an existing folder, or when a registered name's checkpoint folder is
    missing (the message then gives the command that trains it). Raises ValueError when a
    registered name belongs to another model class.
    """
    from vqkit import registry

    if not registry.is_registered(name_or_path) and not Path(name_or_path).is_dir():
        known = ", ".join(registry.list_models()) or "none are registered"
        raise FileNotFoundError(
            f"model {os.fspath(name_or_path)!r} not found: it is neither a registered model name "
            f"(known: {known}) nor a checkpoint folder"
        )
    return ImageTokenizer.from_pretrained(name_or_path, map_location=device)


def _check_image_size(image_size: Any, decoded: tuple[int, int], factor: int) -> tuple[int, int]:
    try:
        height, width = (int(side) for side in image_size)
    except (TypeError, ValueError):
        raise ValueError(f"image_size must be a pair (H, W) of ints, got {image_size!r}") from None
    if not (0 < height <= decoded[0] and 0 < width <= decoded[1]):
        raise ValueError(
            f"image_size {height}x{width} is invalid for these codes: each side must be from 1 to "
            f"the decoded size {decoded[0]}x{decoded[1]} (the code grid times {factor})"
        )
    return height, width
