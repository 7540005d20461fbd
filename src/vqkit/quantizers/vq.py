"""VectorQuantizer: one codebook, nearest-code lookup, EMA or gradient-trained codes."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import Quantizer, check_finite_scores, rotation_trick, straight_through
from .codebook import Codebook
from .output import QuantizerOutput, perplexity_from_counts


def commitment_and_codebook_losses(
    query: Tensor, codes: Tensor, scores: Tensor | None, commitment_weight: float, train_codes: bool
) -> tuple[Tensor, Tensor]:
    """Return (weighted commitment loss, codebook loss) as scalars for (N, D) rows.

    Without autograd the commitment term comes from the search's squared distances (N,), which
    saves a pass over the data; with autograd it is ``mse(query, sg(codes))``. The codebook loss
    ``mse(codes, sg(query))`` is nonzero only when the codes train by gradient.
    """
    zero = query.new_zeros(())
    if query.shape[0] == 0:
        return zero, zero

    if scores is not None and not query.requires_grad:
        commitment = scores.mean() / query.shape[1]
    else:
        commitment = nn.functional.mse_loss(query, codes.detach())
    codebook_loss = nn.functional.mse_loss(codes, query.detach()) if train_codes else zero
    return commitment_weight * commitment, codebook_loss


class VectorQuantizer(Quantizer):
    """Nearest-neighbour vector quantizer with one codebook.

    Args:
        dim: size D of the vectors to quantize.
        codebook_size: number of codes K.
        distance: ``"l2"``, or ``"cosine"`` to match l2-normalised vectors to l2-normalised codes.
        ema_decay: EMA decay of the code updates, or None to train the codes by gradient through
            the codebook loss ``mse(codes, sg(x))``.
        commitment_weight: weight of the commitment loss ``mse(x, sg(codes))``.
        kmeans_init: fit the codes by k-means on the first training batches.
        kmeans_iters: Lloyd iterations of that fit.
        kmeans_init_points: vectors collected for that fit; None: ``min(16 K, max(K, 2**18))``.
        dead_code_threshold: restart a code after it goes unused for this many training steps;
            None disables restarts.
        rotation_trick: pass gradients with the rotation trick instead of the straight-through copy.
        channel_first: inputs are (B, D, ...) instead of (B, ..., D).
        seed: seed for k-means and restarts; None follows ``torch.manual_seed``.

    Shapes:
        input (B, ..., D) -> ``quantized`` (B, ..., D) in the input dtype, ``indices`` (B, ...) long.
    """

    def __init__(
        self,
        dim: int,
        codebook_size: int,
        distance: str = "l2",
        ema_decay: float | None = 0.99,
        commitment_weight: float = 0.25,
        kmeans_init: bool = True,
        kmeans_iters: int = 10,
        kmeans_init_points: int | None = None,
        dead_code_threshold: int | None = 100,
        rotation_trick: bool = False,
        channel_first: bool = False,
        seed: int | None = None,
    ):
        super().__init__(dim, channel_first)
        if distance not in ("l2", "cosine"):
            raise ValueError(f"distance must be 'l2' or 'cosine', got {distance!r}")
        self.codebook_size = codebook_size
        self.commitment_weight = commitment_weight
        self.rotation_trick = rotation_trick
        self.codebook = Codebook(
            dim,
            codebook_size,
            metric=distance,
            ema_decay=ema_decay,
            kmeans_init=kmeans_init,
            kmeans_iters=kmeans_iters,
            kmeans_init_points=kmeans_init_points,
            dead_code_threshold=dead_code_threshold,
            seed=seed,
        )

    def forward(self, x: Tensor) -> QuantizerOutput:
        # In eval the search distances stand in for the element-wise finite check.
        flat, lead_shape = self._flatten(x, check_finite=self.training)
        codebook = self.codebook

        with torch.autocast(device_type=flat.device.type, enabled=False):
            query = codebook.prepare_query(flat)
            if self.training:
                codebook.maybe_initialize(query)

            scores, ids = codebook.search_codes(query)
            ids = ids[:, 0]
            scores = scores[:, 0]
            if not self.training:
                check_finite_scores(scores, flat)
            codes = codebook.lookup(ids)

            if self.training:
                counts, dead = codebook.update(query.detach(), ids)
            else:
                counts = torch.bincount(ids, minlength=self.codebook_size)
                dead = codebook.count_dead()

            commitment, codebook_loss = commitment_and_codebook_losses(
                query, codes, scores, self.commitment_weight, train_codes=codebook.ema_decay is None
            )
            if self.rotation_trick:
                out = rotation_trick(query, codes)
            else:
                out = straight_through(query, codes.detach())

        return QuantizerOutput(
            quantized=self._unflatten(out, lead_shape, x.dtype),
            indices=ids.reshape(lead_shape),
            loss=commitment + codebook_loss,
            commitment_loss=commitment,
            codebook_loss=codebook_loss,
            perplexity=perplexity_from_counts(counts),
            dead_codes=dead.to(ids.device),
        )

    def codes_from_indices(self, indices: Tensor) -> Tensor:
        """Return the codes for ``indices`` (B, ...) in the input layout: (B, ..., D), or (B, D, ...)
        with ``channel_first``. In eval mode this equals ``forward(x).quantized`` for the same x."""
        codes = self.codebook.codes_from_indices(indices)
        return codes.movedim(-1, 1) if self.channel_first and codes.ndim > 2 else codes
