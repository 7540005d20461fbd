"""A small PatchGAN discriminator and the hinge losses for adversarial training of image tokenizers."""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F


class PatchDiscriminator(nn.Module):
    """PatchGAN discriminator: strided 4x4 convolutions that score overlapping image patches.

    As in pix2pix (Isola et al., 2017) and VQGAN, but with GroupNorm instead of BatchNorm, so
    that the scores do not depend on batch statistics, which differ per rank under DDP.

    Args:
        channels: channels of the first convolution; each further stride-2 layer doubles them.
        num_layers: stride-2 convolutions. With 3, a 64 x 64 input gives a 6 x 6 logit map
            and each logit has a receptive field of 70 x 70 pixels, as in pix2pix.
        norm_groups: GroupNorm groups; must divide `channels`.

    Input: float images (B, 3, H, W) in [0, 1]. Output: logits (B, 1, h, w), higher for "real".
    """

    def __init__(self, channels: int = 32, num_layers: int = 3, norm_groups: int = 8):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        width = channels
        for _ in range(num_layers - 1):
            layers += [
                nn.Conv2d(width, width * 2, 4, stride=2, padding=1, bias=False),
                nn.GroupNorm(norm_groups, width * 2),
                nn.LeakyReLU(0.2),
            ]
            width *= 2
        layers += [
            nn.Conv2d(width, width * 2, 4, stride=1, padding=1, bias=False),
            nn.GroupNorm(norm_groups, width * 2),
            nn.LeakyReLU(0.2),
            nn.Conv2d(width * 2, 1, 4, stride=1, padding=1),
        ]
        self.layers = nn.Sequential(*layers)

    def forward(self, images: Tensor) -> Tensor:
        return self.layers(images * 2.0 - 1.0)


def hinge_discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """Return the discriminator's hinge loss, `mean(relu(1 - real)) + mean(relu(1 + fake))`."""
    return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()


def hinge_generator_loss(fake_logits: Tensor) -> Tensor:
    """Return the generator's hinge loss, `-mean(fake)`."""
    return -fake_logits.mean()
