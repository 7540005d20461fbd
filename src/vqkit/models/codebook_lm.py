"""Codebook-feature language models, after "Codebook Features: Sparse and Discrete
Interpretability for Neural Networks" (Tamkin, Taufeeque and Goodman, 2023).

`CodebookLM` wraps a transformers decoder and routes two activations of every block through a
`CodebookBottleneck`:

- "attn": the concatenated head outputs, just before the attention output projection, with
  one codebook per head (G = number of heads);
- "mlp": the MLP block's output, with one codebook (G = 1).

Sites are named "layers.{i}.attn" and "layers.{i}.mlp". Training uses the language-model
loss plus the codebook loss; `vqkit train codebook-lm` trains the codes of a frozen model by
default (see `vqkit.models.lm_train_config`). The active codes are discrete features:
`recording` reads them and `steering` forces chosen codes on.

    model = CodebookLM.from_pretrained("codebook-lm-tokfsm-k1")
    with model.recording() as codes:
        model(tokens)                            # codes["layers.1.mlp"]: long (B, T, 1, k)
    with model.steering({"layers.1.mlp": CodeOverride(torch.tensor([[42]]))}):
        steered = model.generate(prompt, max_new_tokens=20)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from vqkit.models.causal_lm import CausalLM
from vqkit.models.codebook_bottleneck import CodebookBottleneck, CodeOverride

SITE_KINDS = ("attn", "mlp")


@dataclass(frozen=True)
class DecoderLayout:
    """Module paths, in a transformers decoder, of the blocks and of the modules that bottlenecks attach to."""

    layers: str
    """Dotted path from the causal-LM model to the ModuleList of blocks."""
    attention_output: str
    """Path, inside a block, of the attention output projection; its input is the heads' output."""
    mlp: str
    """Path, inside a block, of the MLP module; its output is the MLP site."""


_LLAMA_LAYOUT = DecoderLayout("model.layers", "self_attn.o_proj", "mlp")
DECODER_LAYOUTS: dict[str, DecoderLayout] = {
    **{name: _LLAMA_LAYOUT for name in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "olmo", "olmo2")},
    "gpt_neox": DecoderLayout("gpt_neox.layers", "attention.dense", "mlp"),
    "gpt2": DecoderLayout("transformer.h", "attn.c_proj", "mlp"),
}


@dataclass
class CodebookLMOutput:
    """Result of `CodebookLM.forward`.

    Attributes:
        logits: float (B, T, V) next-token logits.
        loss: lm_loss + codebook_loss_weight * codebook_loss, or None without labels.
        lm_loss: mean next-token cross-entropy in nats, or None without labels.
        codebook_loss: mean over sites of the codebook loss plus the weighted commitment loss
            (sites under an override in eval mode are left out).
        perplexity: mean over sites of the code perplexity of this batch.
        dead_codes: codes past the dead-code threshold, summed over sites.
    """

    logits: Tensor
    loss: Tensor | None
    lm_loss: Tensor | None
    codebook_loss: Tensor
    perplexity: Tensor
    dead_codes: Tensor


class CodebookLM(CausalLM):
    """A causal LM with a sparse top-k codebook at the attention and MLP output of each block.

    Args:
        lm_config: transformers config dictionary with "model_type" (see `CausalLM`).
        codebook_size: codes per codebook K.
        k: active codes per codebook and token (1 on TokFSM, 8 on text).
        sites: which outputs get codebooks, a subset of ("attn", "mlp").
        layers: block indices that get codebooks; None means all.
        commitment_weight: weight of the commitment loss ``mse(x, sg(codes))`` at every site.
        dead_code_threshold: training steps without use after which a code is restarted from
            a recent activation; None disables restarts.
        kmeans_init: initialise each codebook by k-means on its first training batch.
        codebook_loss_weight: weight of the codebook loss in `loss`.
        seed: seed of the codebooks' k-means and restarts.
    """

    def __init__(
        self,
        lm_config: dict[str, Any],
        codebook_size: int = 1000,
        k: int = 1,
        sites: Sequence[str] = SITE_KINDS,
        layers: Sequence[int] | None = None,
        commitment_weight: float = 0.25,
        dead_code_threshold: int | None = 200,
        kmeans_init: bool = True,
        codebook_loss_weight: float = 1.0,
        seed: int = 0,
    ):
        super().__init__(lm_config)
        if isinstance(sites, str):
            sites = [sites]
        unknown = sorted(set(sites) - set(SITE_KINDS))
        if unknown or not sites:
            raise ValueError(f"sites must be a non-empty subset of {SITE_KINDS}, got {list(sites)}")
        self.layout = _layout_for(self.lm.config.model_type)
        blocks = _get_submodule(self.lm, self.layout.layers)
        layers = list(range(len(blocks))) if layers is None else [int(layer) for layer in layers]
        if len(set(layers)) != len(layers):
            raise ValueError(f"layers {list(layers)} repeats a layer; list each layer once")
        bad_layers = [layer for layer in layers if not 0 <= layer < len(blocks)]
        if bad_layers:
            raise ValueError(f"layers {bad_layers} do not exist; this model has layers 0..{len(blocks) - 1}")
        self.codebook_loss_weight = codebook_loss_weight

        num_heads = int(self.lm.config.num_attention_heads)
        self.bottlenecks = nn.ModuleDict()
        self._hooks = []
        for layer in layers:
            block = blocks[layer]
            for kind in SITE_KINDS:
                if kind not in sites:
                    continue
                if kind == "attn":
                    module = _get_submodule(block, self.layout.attention_output)
                    dim, groups = _input_features(module), num_heads
                else:
                    module = _get_submodule(block, self.layout.mlp)
                    dim, groups = int(self.lm.config.hidden_size), 1
                name = site_name(layer, kind)
                bottleneck = CodebookBottleneck(
                    dim,
                    codebook_size,
                    k,
                    groups=groups,
                    commitment_weight=commitment_weight,
                    dead_code_threshold=dead_code_threshold,
                    kmeans_init=kmeans_init,
                    seed=seed + 1000 * len(self.bottlenecks),
                )
                self.bottlenecks[_module_key(name)] = bottleneck
                self._hooks.append(_attach(module, bottleneck, kind))

    # ---- sites --------------------------------------------------------------------------------

    @property
    def sites(self) -> list[str]:
        """Names of the sites with a codebook, in model order ("layers.0.attn", "layers.0.mlp", ...)."""
        return [_site_from_key(key) for key in self.bottlenecks]

    def bottleneck(self, site: str) -> CodebookBottleneck:
        """Return the bottleneck of `site`; raises ValueError for an unknown site name."""
        key = _module_key(site) if isinstance(site, str) else None
        if key not in self.bottlenecks:
            raise ValueError(f"unknown codebook site {site!r}; valid sites: {', '.join(self.sites)}")
        return self.bottlenecks[key]

    # ---- forward ------------------------------------------------------------------------------

    def forward(self, input_ids: Tensor, labels: Tensor | None = None, **kwargs: Any) -> CodebookLMOutput:
        """Run the model on long `input_ids` (B, T); with `labels` (B, T), also return the losses."""
        output = super().forward(input_ids, labels=labels, **kwargs)
        active = [b for b in self.bottlenecks.values() if b.enabled and b.last_loss is not None]
        zero = output.logits.new_zeros(())
        codebook_loss = torch.stack([b.last_loss for b in active]).mean() if active else zero
        perplexity = torch.stack([b.last_perplexity for b in active]).mean() if active else zero
        dead_codes = torch.stack([b.last_dead_codes for b in active]).sum() if active else zero.long()

        loss = None
        if output.loss is not None:
            loss = output.loss + self.codebook_loss_weight * codebook_loss
        return CodebookLMOutput(
            logits=output.logits,
            loss=loss,
            lm_loss=output.loss,
            codebook_loss=codebook_loss,
            perplexity=perplexity,
            dead_codes=dead_codes,
        )

    # ---- reading and steering codes ---------------------------------------------------------------

    @contextlib.contextmanager
    def recording(self, sites: Sequence[str] | None = None) -> Iterator[dict[str, Tensor]]:
        """Collect the active codes of `sites` (default: all) during the forward calls inside the block.

        Yields a dictionary that, after each forward call, maps each site to the long
        (B, T, G, k) codes of that call, best first in each group.
        """
        if sites is None:
            names = self.sites
        elif isinstance(sites, str):
            names = [sites]
        else:
            names = list(sites)
        bottlenecks = {name: self.bottleneck(name) for name in names}
        codes: dict[str, Tensor] = {}
        hooks = []
        for name, bottleneck in bottlenecks.items():
            bottleneck.recording = True
            hooks.append(bottleneck.register_forward_hook(_store_codes(codes, name)))
        try:
            yield codes
        finally:
            for name, bottleneck in bottlenecks.items():
                bottleneck.recording = False
                bottleneck.last_indices = None
            for hook in hooks:
                hook.remove()

    def encode_codes(self, input_ids: Tensor, sites: Sequence[str] | None = None) -> dict[str, Tensor]:
        """Return the active codes of `sites` for long `input_ids` (B, T): site -> long (B, T, G, k)."""
        with torch.no_grad(), self.recording(sites) as codes:
            self(input_ids)
        return dict(codes)

    @contextlib.contextmanager
    def steering(self, overrides: dict[str, CodeOverride]) -> Iterator[None]:
        """Force codes on at the given sites for the forward and `generate` calls inside the block.

        The model must be in eval mode. Raises ValueError for unknown sites or invalid codes.
        """
        targets = {}
        for site, override in overrides.items():
            bottleneck = self.bottleneck(site)
            bottleneck.check_codes(override.codes)
            positions = override.positions
            if positions is not None and not (
                isinstance(positions, (list, tuple)) and all(isinstance(p, int) for p in positions)
            ):
                raise ValueError(f"override positions must be a list of ints or None, got {positions!r}")
            targets[site] = bottleneck
        try:
            for site, bottleneck in targets.items():
                bottleneck.override = overrides[site]
            yield
        finally:
            for bottleneck in targets.values():
                bottleneck.override = None

    @contextlib.contextmanager
    def codebooks_disabled(self) -> Iterator[None]:
        """Bypass every codebook inside the block, so the model runs as the plain LM it wraps."""
        previous = {key: b.enabled for key, b in self.bottlenecks.items()}
        try:
            for bottleneck in self.bottlenecks.values():
                bottleneck.enabled = False
            yield
        finally:
            for key, enabled in previous.items():
                self.bottlenecks[key].enabled = enabled

    def code_vector(self, site: str, code: int, group: int = 0) -> Tensor:
        """Return code `code` of group `group` at `site` as a float (D / G,) vector."""
        bottleneck = self.bottleneck(site)
        if not 0 <= group < bottleneck.groups:
            raise ValueError(f"group {group} does not exist at {site}; valid groups are 0..{bottleneck.groups - 1}")
        if not 0 <= code < bottleneck.codebook_size:
            raise ValueError(f"code {code} does not exist; valid codes are 0..{bottleneck.codebook_size - 1}")
        return bottleneck.codebooks[group].codebook.weight[code].detach()


def site_name(layer: int, kind: str) -> str:
    """Return the name of a codebook site, such as "layers.3.mlp"."""
    return f"layers.{layer}.{kind}"


def _module_key(site: str) -> str:
    # nn.ModuleDict keys cannot contain ".".
    return site.replace(".", "_")


def _site_from_key(key: str) -> str:
    _, layer, kind = key.split("_")
    return site_name(int(layer), kind)


def _store_codes(codes: dict[str, Tensor], name: str):
    def hook(bottleneck: CodebookBottleneck, args, output) -> None:
        if bottleneck.last_indices is not None:
            codes[name] = bottleneck.last_indices

    return hook


def _layout_for(model_type: str) -> DecoderLayout:
    layout = DECODER_LAYOUTS.get(model_type)
    if layout is None:
        raise ValueError(
            f"CodebookLM does not know where the attention and MLP outputs of model_type {model_type!r} are; "
            f"supported: {', '.join(sorted(DECODER_LAYOUTS))}. Add a DecoderLayout to DECODER_LAYOUTS for it."
        )
    return layout


def _get_submodule(root: nn.Module, path: str) -> Any:
    try:
        return root.get_submodule(path)
    except AttributeError as error:
        raise ValueError(f"{type(root).__name__} has no submodule {path!r}: {error}") from error


def _input_features(module: nn.Module) -> int:
    """Input size of a linear layer: nn.Linear, or GPT-2's Conv1D whose weight is (in, out)."""
    if isinstance(module, nn.Linear):
        return module.in_features
    return int(module.weight.shape[0])


def _attach(module: nn.Module, bottleneck: CodebookBottleneck, kind: str):
    """Route the input (attention) or output (MLP) of `module` through `bottleneck`; return the hook handle."""
    if kind == "attn":

        def pre_hook(_module, args):
            return (bottleneck(args[0]), *args[1:])

        return module.register_forward_pre_hook(pre_hook)

    def hook(_module, _args, output):
        if isinstance(output, tuple):
            return (bottleneck(output[0]), *output[1:])
        return bottleneck(output)

    return module.register_forward_hook(hook)
