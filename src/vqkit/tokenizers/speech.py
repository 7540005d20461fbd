"""The speech codec of "LSCodec: Low-Bitrate and Speaker-Decoupled Discrete Speech Codec", at small scale.

    codec = SpeechCodec.from_pretrained("speech-lscodec-50hz")
    codes = codec.encode(wav, sample_rate)                  # long (B, frames)
    wav = codec.decode(codes, prompt=prompt_wav, prompt_sample_rate=sr)   # float (B, samples), 16 kHz

A convolutional encoder reads the log-mel spectrogram (100 frames/s) and returns a mean and a
log-variance per code frame (50 or 25 frames/s). Training has two stages (`vqkit train
speech-codec`). A VAE stage samples the bottleneck and adds a KL term. A VQ stage then quantizes
the mean with one codebook, initialised by k-means on the stage-1 means. In both the encoder reads a
speaker-perturbed waveform, and a transformer decoder, given a mel prompt of the unperturbed
voice, predicts the unperturbed log-mel spectrogram and k-means ids of MFCC frames (in place of
the k-means ids of WavLM features that LSCodec predicts). A shared mel vocoder (`ISTFTVocoder`) renders audio.

The same class with `quantizer="rvq"` and `use_prompt=False` is the EnCodec-style baseline:
residual codes of the plain input, trained end to end, no perturbation and no prompt.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from vqkit._modules import eval_mode
from vqkit.hub import VQKitModelMixin
from vqkit.quantizers import ResidualVQ, VectorQuantizer
from vqkit.tokenizers.speech_audio import (
    AudioBlocks,
    Block,
    active_level_db,
    check_level_db,
    frame_power,
    frame_windows,
    level_gain,
    prepare_waveform,
    tensor_blocks,
)
from vqkit.tokenizers.speech_features import SAMPLE_RATE, LogMel, MFCCFrames
from vqkit.tokenizers.speech_modules import MelEncoder, PromptDecoder
from vqkit.tokenizers.vocoder import ISTFTVocoder

logger = logging.getLogger(__name__)

MEL_HOP = 160  # samples per log-mel frame: 100 frames/s
N_MFCC = 20
# Log-mel values (natural log of power, floored at log(1e-5) = -11.5) are mapped to about [-2, 2].
MEL_OFFSET, MEL_SCALE = 5.0, 4.0


@dataclass
class SpeechCodecOutput:
    """Losses of one training forward pass (scalars) and the predicted log-mel frames."""

    loss: Tensor
    mel_l1: Tensor
    token_ce: Tensor
    kl: Tensor
    quantizer_loss: Tensor
    perplexity: Tensor
    dead_codes: Tensor
    mel: Tensor
    """(B, n_mels, frames) log-mel prediction of the frames outside the prompt."""


class SpeechCodec(nn.Module, VQKitModelMixin):
    """Speech tokenizer: 16 kHz audio <-> long codes (B, frames), or (B, frames, Q) for residual codes.

    Args:
        frame_rate: code frames per second, 100 / 2**k (50 or 25).
        codebook_size: codes V per codebook.
        quantizer: "vq" (one codebook) or "rvq" (`num_quantizers` residual levels).
        num_quantizers: residual levels of "rvq".
        latent_dim: size of the bottleneck vectors.
        encoder_channels: width of the convolutional encoder.
        decoder_dim, decoder_layers, decoder_heads: the transformer decoder.
        use_prompt: condition the decoder on a mel prompt of the target voice.
        mfcc_clusters: MFCC k-means classes the decoder also predicts (0 disables that target).
        kl_weight, token_weight: weights of the KL term (VAE stage) and of the MFCC-id cross-entropy.
        commitment_weight, ema_decay, dead_code_threshold: the codebook's training (see `VectorQuantizer`).
        vocoder: registered name or folder of the `ISTFTVocoder` that `decode` uses.
        n_mels: mel bands.
        seed: seed of the codebook's k-means and restarts.
        input_level_db: active speech level in dB re full scale that `encode` and the voice prompt
            are scaled to (see `speech_audio.active_level_db`), or None to pass the input as it is.
            Training measures it on the training split, whose utterances lie close to one level, so
            the codes of quieter or louder input match those of the same speech at that level.
    """

    sample_rate = SAMPLE_RATE

    def __init__(
        self,
        frame_rate: int = 50,
        codebook_size: int = 300,
        quantizer: str = "vq",
        num_quantizers: int = 1,
        latent_dim: int = 64,
        encoder_channels: int = 256,
        decoder_dim: int = 192,
        decoder_layers: int = 4,
        decoder_heads: int = 4,
        use_prompt: bool = True,
        mfcc_clusters: int = 100,
        kl_weight: float = 0.01,
        token_weight: float = 0.1,
        commitment_weight: float = 0.25,
        ema_decay: float = 0.99,
        dead_code_threshold: int = 200,
        vocoder: str = "speech-vocoder",
        n_mels: int = 80,
        seed: int = 0,
        input_level_db: float | None = None,
    ):
        super().__init__()
        downsample = SAMPLE_RATE // MEL_HOP // frame_rate
        if frame_rate * downsample * MEL_HOP != SAMPLE_RATE or downsample & (downsample - 1):
            raise ValueError(f"frame_rate must be 100 / 2**k frames per second (100, 50 or 25), got {frame_rate}")
        if quantizer not in ("vq", "rvq"):
            raise ValueError(f"quantizer must be 'vq' or 'rvq', got {quantizer!r}")
        if input_level_db is not None:
            input_level_db = check_level_db(input_level_db)
        if quantizer == "vq" and num_quantizers != 1:
            raise ValueError(f"quantizer='vq' has one codebook, but num_quantizers={num_quantizers}; use quantizer='rvq' for several")

        self.frame_rate, self.downsample, self.n_mels = frame_rate, downsample, n_mels
        self.codebook_size, self.num_quantizers = codebook_size, num_quantizers
        self.use_prompt, self.mfcc_clusters = use_prompt, mfcc_clusters
        self.kl_weight, self.token_weight = kl_weight, token_weight
        self.vocoder_name = vocoder
        self.input_level_db = input_level_db

        # The feature extractors have no weights. Keeping them out of the module tree keeps
        # their filter banks out of the checkpoint.
        self.__dict__["_features"] = {"log_mel": LogMel(n_mels=n_mels), "mfcc": MFCCFrames(n_mfcc=N_MFCC)}
        self.encoder = MelEncoder(n_mels, encoder_channels, 2 * latent_dim, downsample)
        quantizer_kwargs = {
            "commitment_weight": commitment_weight,
            "ema_decay": ema_decay,
            "dead_code_threshold": dead_code_threshold,
            "seed": seed,
        }
        if quantizer == "vq":
            self.quantizer = VectorQuantizer(latent_dim, codebook_size, **quantizer_kwargs)
        else:
            self.quantizer = ResidualVQ(
                latent_dim, codebook_size, num_quantizers, shared_codebook=False, **quantizer_kwargs
            )
        self.decoder = PromptDecoder(
            latent_dim, n_mels, decoder_dim, decoder_layers, decoder_heads, downsample, use_prompt
        )
        self.mel_head = nn.Linear(decoder_dim, downsample * n_mels)
        self.postnet = nn.Sequential(
            nn.Conv1d(n_mels, 256, 5, padding=2), nn.GELU(), nn.Conv1d(256, n_mels, 5, padding=2)
        )
        self.token_head = nn.Linear(decoder_dim, downsample * mfcc_clusters) if mfcc_clusters > 0 else None

        # Standardisation and k-means centres of the MFCC targets, fitted when stage 1 starts.
        self.register_buffer("mfcc_mean", torch.zeros(N_MFCC))
        self.register_buffer("mfcc_std", torch.ones(N_MFCC))
        self.register_buffer("mfcc_centroids", torch.zeros(max(mfcc_clusters, 1), N_MFCC))
        self.__dict__["_vocoder"] = None

    # ---- properties ---------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.mel_head.weight.device

    @property
    def samples_per_frame(self) -> int:
        """16 kHz samples per code frame (320 at 50 Hz, 640 at 25 Hz)."""
        return self.downsample * MEL_HOP

    @property
    def bitrate(self) -> float:
        """Bits per second: frame rate x codebooks x ceil(log2 V)."""
        return self.frame_rate * self.num_quantizers * math.ceil(math.log2(self.codebook_size))

    @property
    def log_mel(self) -> LogMel:
        """Log-mel spectrogram (`LogMel`) on the codec's device."""
        return self._feature("log_mel")

    @property
    def mfcc(self) -> MFCCFrames:
        """MFCC frames (`MFCCFrames`) on the codec's device."""
        return self._feature("mfcc")

    def _feature(self, name: str) -> nn.Module:
        module = self._features[name]
        if next(module.buffers()).device != self.device:
            module.to(self.device)
        return module

    @property
    def vocoder(self) -> ISTFTVocoder:
        """The mel vocoder, loaded on first use from `vocoder` (a registered name or a folder)."""
        if self._vocoder is None:
            self.vocoder = ISTFTVocoder.from_pretrained(self.vocoder_name)
        if self._vocoder.window.device != self.device:
            self._vocoder.to(self.device)
        return self._vocoder

    @vocoder.setter
    def vocoder(self, module: ISTFTVocoder) -> None:
        # Kept out of the module tree, so the codec's state dict never contains the vocoder.
        self.__dict__["_vocoder"] = module.eval()

    def __setattr__(self, name: str, value) -> None:
        # nn.Module would register an assigned module as a child before the property saw it.
        if name == "vocoder":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    # ---- features -----------------------------------------------------------------------------

    def mel_frames(self, waveform: Tensor) -> Tensor:
        """Float (B, samples) at 16 kHz, samples a multiple of `samples_per_frame` -> log-mel (B, n_mels, samples / 160)."""
        return self.log_mel(waveform)[..., : waveform.shape[-1] // MEL_HOP]

    def token_targets(self, waveform: Tensor) -> Tensor:
        """Return the MFCC k-means ids, long (B, samples / 160), of float (B, samples) 16 kHz audio."""
        mfcc = self.mfcc(waveform)[:, : waveform.shape[-1] // MEL_HOP]  # (B, frames, 20)
        standardized = (mfcc - self.mfcc_mean) / self.mfcc_std
        return torch.cdist(standardized, self.mfcc_centroids.expand(mfcc.shape[0], -1, -1)).argmin(dim=-1)

    # ---- the model ----------------------------------------------------------------------------

    def encode_mel(self, log_mel: Tensor) -> tuple[Tensor, Tensor]:
        """Log-mel (B, n_mels, frames * downsample) -> (mean, log-variance), each (B, latent_dim, frames)."""
        stats = self.encoder((log_mel + MEL_OFFSET) / MEL_SCALE)
        mean, log_variance = stats.chunk(2, dim=1)
        return mean, log_variance.clamp(-3.0, 3.0)

    def decode_latents(self, latents: Tensor, prompt_mel: Tensor | None) -> tuple[Tensor, Tensor]:
        """Latents (B, latent_dim, T) and a prompt log-mel (B, n_mels, P) -> (log-mel (B, n_mels, T * downsample),
        MFCC-id logits (B, T * downsample, mfcc_clusters), or None without MFCC targets)."""
        batch, frames = latents.shape[0], latents.shape[-1]
        if prompt_mel is not None:
            prompt_mel = (prompt_mel + MEL_OFFSET) / MEL_SCALE
        hidden = self.decoder(latents, prompt_mel if self.use_prompt else None)  # (B, T, dim)
        mel = self.mel_head(hidden).reshape(batch, frames * self.downsample, self.n_mels).transpose(1, 2)
        mel = mel + self.postnet(mel)
        logits = None
        if self.token_head is not None:
            logits = self.token_head(hidden).reshape(batch, frames * self.downsample, -1)
        return mel * MEL_SCALE - MEL_OFFSET, logits

    def forward(
        self, clean: Tensor, perturbed: Tensor | None, prompt_frames: int, prompt_first: bool, quantize: bool
    ) -> SpeechCodecOutput:
        """Run one training pass on float (B, samples) 16 kHz audio, samples a multiple of `samples_per_frame`.

        The encoder reads `perturbed` (or `clean` when None). The first or last `prompt_frames`
        log-mel frames of `clean` (a multiple of `downsample`) are the prompt; the losses cover the
        other frames. `quantize` False samples the VAE bottleneck (stage 1), True quantizes the mean.
        """
        if prompt_frames % self.downsample:
            raise ValueError(f"prompt_frames={prompt_frames} must be a multiple of downsample={self.downsample}")
        target = self.mel_frames(clean)  # (B, n_mels, F)
        mean, log_variance = self.encode_mel(self.mel_frames(perturbed if perturbed is not None else clean))

        zero = target.new_zeros(())
        kl, quantizer_loss, perplexity, dead = zero, zero, zero, zero
        if quantize:
            out = self.quantizer(mean.transpose(1, 2))
            latents = out.quantized.transpose(1, 2)
            quantizer_loss, perplexity, dead = (out.loss, out.perplexity, out.dead_codes.float())
        else:
            latents = mean + torch.randn_like(mean) * (0.5 * log_variance).exp()
            kl = 0.5 * (mean.pow(2) + log_variance.exp() - 1.0 - log_variance).mean()

        # Split off the prompt: it conditions the decoder and is excluded from the losses.
        if not self.use_prompt:
            prompt_frames = 0
        code_frames = prompt_frames // self.downsample
        total = target.shape[-1]
        if prompt_first:
            prompt, latents, target = (
                target[..., :prompt_frames],
                latents[..., code_frames:],
                target[..., prompt_frames:],
            )
            kept = slice(prompt_frames, total)
        else:
            prompt, latents, target = (
                target[..., total - prompt_frames :],
                latents[..., : latents.shape[-1] - code_frames],
                target[..., : total - prompt_frames],
            )
            kept = slice(0, total - prompt_frames)

        mel, logits = self.decode_latents(latents, prompt if prompt_frames else None)
        mel_l1 = (mel - target).abs().mean()
        token_ce = zero
        if self.mfcc_clusters > 0:
            ids = self.token_targets(clean)[:, kept]
            token_ce = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids.reshape(-1))
        loss = mel_l1 + self.token_weight * token_ce + self.kl_weight * kl + quantizer_loss
        return SpeechCodecOutput(loss, mel_l1, token_ce, kl, quantizer_loss, perplexity, dead, mel)

    # ---- encode -------------------------------------------------------------------------------

    def _indices(self, mean: Tensor) -> Tensor:
        """(B, latent_dim, T) means -> long codes (B, T), or (B, T, Q) for residual codes."""
        indices = self.quantizer(mean.transpose(1, 2)).indices
        return indices

    def _encode_block(self, block: Block, total_samples: int) -> Tensor:
        """Codes of the frames that start in [block.start, block.stop), from the block and its margins."""
        samples, spf = block.samples.to(self.device), self.samples_per_frame
        padded_total = math.ceil(total_samples / spf) * spf
        if block.stop >= total_samples:  # the last block: zero-pad to whole frames, as a single pass does
            end = padded_total - (block.start - block.left)
            samples = nn.functional.pad(samples, (0, end - samples.shape[-1]))
        core_stop = min(padded_total, math.ceil(block.stop / spf) * spf)

        mel = self.log_mel(samples)[..., : samples.shape[-1] // MEL_HOP]
        context = self.encoder.context_frames
        core_first = block.left // MEL_HOP
        core_frames = (core_stop - block.start) // MEL_HOP
        first = max(0, core_first - context)
        last = min(mel.shape[-1], core_first + core_frames + context)
        mean, _ = self.encode_mel(mel[..., first:last])
        skip = (core_first - first) // self.downsample
        return self._indices(mean[..., skip : skip + core_frames // self.downsample])

    def _encode_blocks(self, blocks: Iterable[Block], total_samples: int, gain: Tensor | None = None) -> Tensor:
        """Codes of all blocks, each scaled by `gain` (B, 1) when given."""
        if gain is not None:
            blocks = (dataclasses.replace(block, samples=block.samples * gain) for block in blocks)
        return torch.cat([self._encode_block(block, total_samples) for block in blocks], dim=1)

    def level_gain(self, power: Tensor) -> Tensor | None:
        """Frame powers (B, frames) of 16 kHz input -> gains (B, 1) to `input_level_db`, or None when it is unset."""
        if self.input_level_db is None:
            return None
        return level_gain(active_level_db(power), self.input_level_db)

    @torch.no_grad()
    def encode(self, waveform: Tensor, sample_rate: int, block_seconds: int = 30) -> Tensor:
        """Float audio (samples,), (B, samples) or (B, channels, samples) at `sample_rate` -> long codes.

        Returns (B, ceil(samples_16k / samples_per_frame)), or (B, frames, Q) for residual codes.
        The audio is downmixed and resampled to 16 kHz. Input over `block_seconds` is encoded in
        blocks with one second of context on each side, which gives the codes of one pass up to
        float rounding at near-ties. With `input_level_db` set, each item is first scaled to that
        speech level, so its codes do not depend on the recording's gain (within +-40 dB).
        """
        waveform = prepare_waveform(waveform, sample_rate).to(self.device)
        gain = self.level_gain(frame_power(waveform))
        with eval_mode(self):
            return self._encode_blocks(tensor_blocks(waveform, block_seconds), waveform.shape[-1], gain)

    @torch.no_grad()
    def encode_file(self, path: str | os.PathLike[str], block_seconds: int = 30) -> Tensor:
        """Encode a sound file of any length, reading it in blocks; returns long codes (1, frames).

        With `input_level_db` set, a first pass over the blocks measures the file's level.
        """
        blocks = AudioBlocks(path, block_seconds=block_seconds)
        gain = None
        if self.input_level_db is not None:
            cores = (block.samples[..., block.left : block.left + block.stop - block.start] for block in blocks)
            power = torch.cat([frame_power(core) for core in cores], dim=-1)  # (1, frames of 20 ms)
            gain = self.level_gain(power).to(self.device)
        with eval_mode(self):
            return self._encode_blocks(blocks, blocks.num_samples, gain)

    # ---- decode -------------------------------------------------------------------------------

    def _check_codes(self, codes: Tensor) -> Tensor:
        if not isinstance(codes, Tensor) or codes.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise ValueError(
                f"codes must be an integer tensor from encode(), got {getattr(codes, 'dtype', type(codes))}"
            )
        expected = 2 if self.num_quantizers == 1 else 3
        if codes.ndim == expected - 1:
            codes = codes[None]
        if codes.ndim != expected or (expected == 3 and codes.shape[-1] != self.num_quantizers):
            shape = "(batch, frames)" if expected == 2 else f"(batch, frames, {self.num_quantizers})"
            raise ValueError(f"codes must be shaped {shape}, got {tuple(codes.shape)}")
        if codes.shape[1] == 0:
            raise ValueError("codes hold no frames; encode at least 0.1 s of audio")
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise ValueError(
                f"codes must lie in [0, {self.codebook_size - 1}], got values from {int(codes.min())} to {int(codes.max())}"
            )
        return codes.long().to(self.device)

    def prompt_mel(self, prompt: Tensor, sample_rate: int, max_seconds: float = 4.0) -> Tensor:
        """Log-mel (B, n_mels, P) of the first `max_seconds` of a prompt waveform, P a multiple of `downsample`."""
        prompt = prepare_waveform(prompt, sample_rate, name="prompt", rate_name="prompt_sample_rate").to(self.device)
        length = (
            min(prompt.shape[-1], round(max_seconds * SAMPLE_RATE)) // self.samples_per_frame * self.samples_per_frame
        )
        if length == 0:
            raise ValueError(f"the prompt must hold at least {self.samples_per_frame / SAMPLE_RATE:.2f} s of audio")
        prompt = prompt[..., :length]
        gain = self.level_gain(frame_power(prompt))
        return self.mel_frames(prompt if gain is None else prompt * gain)

    @torch.no_grad()
    def decode_mel(self, codes: Tensor, prompt_mel: Tensor | None, window: int = 400, context: int = 50) -> Tensor:
        """Long codes -> log-mel (B, n_mels, frames * downsample), decoded in windows of `window` code frames.

        Each window also reads `context` frames on each side, which are decoded and dropped, so
        every kept frame has at least that much context. `prompt_mel` (B or 1, n_mels, P)
        conditions every window.

        NOTE: windows are decoded independently, so unlike `encode` the result differs slightly
        from decoding the whole sequence at once.
        """
        codes = self._check_codes(codes)
        if self.use_prompt and prompt_mel is None:
            raise ValueError("this codec needs a voice prompt: pass prompt= a few seconds of the target speaker")
        if prompt_mel is not None and prompt_mel.shape[0] not in (1, codes.shape[0]):
            raise ValueError(f"prompt batch {prompt_mel.shape[0]} must be 1 or match the codes' batch {codes.shape[0]}")
        with eval_mode(self):
            latents = self.quantizer.codes_from_indices(codes).transpose(1, 2)  # (B, D, T)
            if prompt_mel is not None:
                prompt_mel = prompt_mel.to(self.device).expand(codes.shape[0], -1, -1)
            pieces = []
            for start, stop, first, last in frame_windows(latents.shape[-1], window, context):
                mel, _ = self.decode_latents(latents[..., first:last], prompt_mel)
                pieces.append(mel[..., (start - first) * self.downsample : (stop - first) * self.downsample])
            return torch.cat(pieces, dim=-1)

    @torch.no_grad()
    def vocode(self, log_mel: Tensor, window: int = 1000, context: int = 32) -> Tensor:
        """Log-mel (B, n_mels, F) -> float (B, F * 160) at 16 kHz with the shared vocoder, in windows of mel frames."""
        pieces = []
        for start, stop, first, last in frame_windows(log_mel.shape[-1], window, context):
            audio = self.vocoder(log_mel[..., first:last].to(self.device))
            pieces.append(audio[..., (start - first) * MEL_HOP : (stop - first) * MEL_HOP])
        return torch.cat(pieces, dim=-1).clamp(-1.0, 1.0)

    @torch.no_grad()
    def decode(self, codes: Tensor, prompt: Tensor | None = None, prompt_sample_rate: int | None = None) -> Tensor:
        """Long codes from `encode` -> float (B, frames * samples_per_frame) at 16 kHz in the prompt's voice.

        `prompt` is a waveform of the target speaker, (samples,), (1 or B, samples) or
        (1 or B, channels, samples) at `prompt_sample_rate`, of which the first 4 s are used. Decoding with
        another speaker's prompt converts the voice. The RVQ baseline ignores the prompt.
        """
        prompt_mel = None
        if self.use_prompt:
            if prompt is None or prompt_sample_rate is None:
                raise ValueError(
                    "decode needs prompt= (a waveform of the target voice) and prompt_sample_rate=; "
                    "to reconstruct, pass the input audio itself"
                )
            prompt_mel = self.prompt_mel(prompt, prompt_sample_rate)
        return self.vocode(self.decode_mel(codes, prompt_mel))

    @torch.no_grad()
    def reconstruct(self, waveform: Tensor, sample_rate: int) -> Tensor:
        """Encode and decode, with the input itself as the prompt: float (B, samples) at 16 kHz."""
        return self.decode(self.encode(waveform, sample_rate), prompt=waveform, prompt_sample_rate=sample_rate)
