"""The sparse codebook bottleneck of "Codebook Features: Sparse and Discrete Interpretability for
Neural Networks", for one site of a transformer (an attention or MLP output).

A site's activation (B, T, D) is split into G groups (one per attention head, or one group for
an MLP output). Each group passes through its own `vqkit.quantizers.TopKCodebook`: the k codes
with the highest ``x.c / ||c||`` are selected and their mean replaces the activation. The
bottleneck also records the active codes and applies code overrides, which is how a user reads
and steers the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from vqkit.quantizers import TopKCodebook


@dataclass
class CodeOverride:
    """Codes forced on at one site during an evaluation forward pass.

    Attributes:
        codes: long (G, n) codes for every position, or (P, G, n) with one row per entry of
            `positions`. In each group the n forced codes join the k - n best-scoring other
            codes, so with n == k they replace the active codes entirely. A group whose
            entries are all -1 keeps its own codes.
        positions: time positions (P,) of each forward call that the override applies to,
            negative values counting from the end; None applies it to every position. During
            `generate` with a KV cache each new token is a call of length 1, so use None there:
            position 0 or -1 would also match every new token.
    """

    codes: Tensor
    positions: list[int] | None = None
    exclusive: bool = False
    """Make the forced codes the only active ones: the group's output becomes their mean, each
    code repeated k / n times in the recorded indices. Needs n to divide k."""


class CodebookBottleneck(nn.Module):
    """G independent top-k codebooks over the G equal channel groups of a (B, T, D) activation.

    Args:
        dim: channels D of the activation.
        codebook_size: codes K per group.
        k: active codes per group and position.
        groups: channel groups G; D must be divisible by G.
        commitment_weight: weight of ``mse(x, sg(codes))``, which keeps the activations near the
            codes. Without it the straight-through gradient can move an activation without bound,
            because moving it changes the output only when the selected codes change.
        dead_code_threshold: training steps without use after which a code is restarted; None disables.
        kmeans_init: fit each codebook by k-means on its first training batch.
        seed: seed of k-means and restarts (group g uses seed + g).

    Shapes:
        forward: (B, T, D) -> (B, T, D). After a call, `last_loss` is the mean over groups of the
        codebook loss plus the weighted commitment loss and, while `recording`, `last_indices` is long (B, T, G, k).
    """

    def __init__(
        self,
        dim: int,
        codebook_size: int,
        k: int,
        groups: int = 1,
        commitment_weight: float = 0.0,
        dead_code_threshold: int | None = None,
        kmeans_init: bool = True,
        seed: int = 0,
    ):
        super().__init__()
        if groups < 1 or dim % groups:
            raise ValueError(f"dim={dim} must be divisible by groups={groups}")
        self.dim, self.groups, self.k, self.codebook_size = dim, groups, k, codebook_size
        self.codebooks = nn.ModuleList(
            TopKCodebook(
                dim // groups,
                codebook_size,
                k=k,
                commitment_weight=commitment_weight,
                kmeans_init=kmeans_init,
                dead_code_threshold=dead_code_threshold,
                seed=seed + group,
            )
            for group in range(groups)
        )
        self.enabled = True
        self.recording = False
        self.override: CodeOverride | None = None
        self.last_loss: Tensor | None = None
        self.last_perplexity: Tensor | None = None
        self.last_dead_codes: Tensor | None = None
        self.last_indices: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        if not self.enabled:
            self.last_loss = None
            self.last_indices = None
            return x
        if x.shape[-1] != self.dim:
            raise ValueError(f"expected activations with {self.dim} channels, got shape {tuple(x.shape)}")
        parts = x.chunk(self.groups, dim=-1)  # G x (B, T, D / G)

        if self.override is not None:
            if self.training:
                raise RuntimeError("code overrides are for evaluation; call model.eval() before steering")
            indices = self._search_with_override(parts)  # (B, T, G, k)
            outputs = [
                codebook.codes_from_indices(indices[:, :, group]) for group, codebook in enumerate(self.codebooks)
            ]
            self.last_loss = None
        else:
            results = [codebook(part) for codebook, part in zip(self.codebooks, parts)]
            outputs = [result.quantized for result in results]
            indices = torch.stack([result.indices for result in results], dim=2)
            self.last_loss = torch.stack([result.loss for result in results]).mean()
            self.last_perplexity = torch.stack([result.perplexity for result in results]).mean()
            self.last_dead_codes = torch.stack([result.dead_codes for result in results]).sum()

        if self.recording:
            self.last_indices = indices.detach()
        return torch.cat(outputs, dim=-1).to(x.dtype)

    def check_codes(self, codes: Tensor) -> Tensor:
        """Validate override codes, shaped (G, n) or (P, G, n); return them as a long tensor."""
        codes = torch.as_tensor(codes)
        if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
            raise ValueError(f"override codes must be integer code ids, got dtype {codes.dtype}")
        codes = codes.long()

        if codes.ndim not in (2, 3) or codes.shape[-2] != self.groups:
            raise ValueError(
                f"override codes must be shaped (groups={self.groups}, n) or (positions, {self.groups}, n), "
                f"got {tuple(codes.shape)}"
            )
        if not 1 <= codes.shape[-1] <= self.k:
            raise ValueError(f"an override forces 1 to k={self.k} codes per group, got {codes.shape[-1]}")
        if (codes < -1).any():
            raise ValueError(f"code ids must be valid ids or -1 (keep the group's own codes), got {int(codes.min())}")

        # -1 marks a group that keeps its own codes; it must fill the group's whole row.
        free = codes == -1
        if (free.any(dim=-1) != free.all(dim=-1)).any():
            raise ValueError("in each group, override codes must be all -1 (keep the group's own codes) or all valid ids")
        if codes.ndim == 3 and (free.all(dim=-1).any(dim=0) != free.all(dim=-1).all(dim=0)).any():
            raise ValueError("a group's override codes must be -1 at every position or at none")

        valid = codes[~free]
        if valid.numel() == 0:
            raise ValueError("the override forces no code: every entry is -1")
        if int(valid.max()) >= self.codebook_size or int(valid.min()) < 0:
            raise ValueError(
                f"code ids must lie in [0, {self.codebook_size - 1}] (or be -1), got {int(valid.max())}"
            )

        sorted_codes = codes.sort(dim=-1).values
        if ((sorted_codes[..., 1:] == sorted_codes[..., :-1]) & (sorted_codes[..., 1:] >= 0)).any():
            raise ValueError("override codes repeat a code within a group; list each code once")
        return codes

    def _search_with_override(self, parts: tuple[Tensor, ...]) -> Tensor:
        """Return the active codes (B, T, G, k) with the override's codes forced in."""
        override = self.override
        codes = self.check_codes(override.codes).to(parts[0].device)
        batch, length = parts[0].shape[:2]
        forced_count = codes.shape[-1]
        if override.exclusive and self.k % forced_count:
            raise ValueError(f"an exclusive override needs a number of codes that divides k={self.k}, got {forced_count}")

        # Boolean (T,) mask of overridden positions, and the forced codes at each of them.
        if override.positions is None:
            selected = torch.arange(length, device=codes.device)
        else:
            outside = [p for p in override.positions if not -length <= p < length]
            if outside:
                raise ValueError(f"override positions {outside} are outside this call's {length} tokens")
            selected = torch.tensor([p % length for p in override.positions], device=codes.device)
        if codes.ndim == 3 and codes.shape[0] != selected.numel():
            raise ValueError(f"override has codes for {codes.shape[0]} positions but lists {selected.numel()}")
        forced = codes if codes.ndim == 3 else codes.expand(selected.numel(), -1, -1)  # (P, G, n)

        indices = []
        for group, (codebook, part) in enumerate(zip(self.codebooks, parts)):
            search_k = min(self.k + forced_count, self.codebook_size)
            query = codebook.codebook.prepare_query(part.reshape(-1, part.shape[-1]).float().contiguous())
            _, ids = codebook.codebook.search_codes(query, k=search_k)
            ids = ids.reshape(batch, length, search_k)
            active = ids[..., : self.k].clone()
            if bool((forced[:, group] < 0).all()):
                indices.append(active)
                continue
            group_codes = forced[:, group].expand(batch, -1, -1)  # (B, P, n)
            if override.exclusive:
                merged = group_codes.repeat_interleave(self.k // forced_count, dim=-1)
            else:
                merged = _merge_forced(ids[:, selected], group_codes, self.k)
            active[:, selected] = merged
            indices.append(active)
        return torch.stack(indices, dim=2)


def _merge_forced(candidates: Tensor, forced: Tensor, k: int) -> Tensor:
    """Put the forced codes first, followed by the best candidates that are not forced.

    candidates: long (B, P, k + n) best first; forced: long (B, P, n). Returns long (B, P, k).
    """
    is_forced = (candidates[..., :, None] == forced[..., None, :]).any(dim=-1)  # (B, P, k + n)
    # A stable sort on the flag keeps the score order among the codes that are not forced.
    order = torch.argsort(is_forced.to(torch.int8), dim=-1, stable=True)
    best_others = candidates.gather(-1, order)[..., : k - forced.shape[-1]]
    return torch.cat([forced, best_others], dim=-1)
