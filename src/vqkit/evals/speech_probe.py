"""Speaker probes and speaker similarity for the speech-codec evaluation.

A speaker probe measures how much speaker identity a representation keeps: it is trained to
name the speaker of training utterances and scored on held-out sentences. Two probes run on
each representation:

- `linear_probe_accuracy`: logistic regression on one vector per utterance (a bag of codes, or
  the mean and standard deviation of mel frames);
- `gru_probe_accuracy`: a small GRU over the frame sequence (code embeddings or mel frames).

`SpeakerEmbedding` is the speaker-similarity measure of voice conversion: MFCC statistics of
an utterance projected by linear discriminant analysis fitted on training speakers.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import torch
from torch import Tensor, nn

from vqkit.tokenizers.speech_features import MFCCFrames


def bag_of_codes(codes: Tensor, codebook_size: int) -> Tensor:
    """Long codes (T,) or (T, Q) -> float (Q * codebook_size,) code frequencies, each level summing to 1."""
    codes = codes.reshape(codes.shape[0], -1)
    histograms = [torch.bincount(level, minlength=codebook_size).float() for level in codes.unbind(dim=1)]
    return torch.cat([h / h.sum().clamp_min(1) for h in histograms])


def frame_statistics(frames: Tensor) -> Tensor:
    """Float (T, C) frames -> float (2 C,): the mean and standard deviation over time."""
    return torch.cat([frames.mean(dim=0), frames.std(dim=0)])


def linear_probe_accuracy(
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    steps: int = 500,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> float:
    """Fit multinomial logistic regression on float (N, F) features and long (N,) labels; return test accuracy.

    Features are standardised with the training mean and deviation; full-batch Adam.
    """
    torch.manual_seed(seed)
    mean, std = train_x.mean(dim=0), train_x.std(dim=0, correction=0).clamp_min(1e-6)
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    classes = int(max(train_y.max(), test_y.max())) + 1
    model = nn.Linear(train_x.shape[1], classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05, weight_decay=weight_decay)
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(train_x), train_y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return float((model(test_x).argmax(dim=1) == test_y).float().mean())


class GRUProbe(nn.Module):
    """Frame sequence -> speaker logits: an input layer, a GRU, mean pooling over time and a linear head.

    Args:
        classes: number of speakers.
        vocabulary: codes per level for code input (embedded and summed over levels), or None
            for float frames of size `input_dim`.
    """

    def __init__(self, classes: int, vocabulary: int | None = None, input_dim: int = 80, hidden: int = 64):
        super().__init__()
        self.vocabulary = vocabulary
        self.embed = nn.Embedding(vocabulary, 32) if vocabulary else nn.Linear(input_dim, 32)
        self.gru = nn.GRU(32, hidden, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: Tensor) -> Tensor:
        """(B, T) or (B, T, Q) long codes, or (B, T, input_dim) floats -> (B, classes)."""
        if self.vocabulary:
            x = self.embed(x.reshape(x.shape[0], x.shape[1], -1)).sum(dim=2)
        else:
            x = self.embed(x)
        hidden, _ = self.gru(x)
        return self.head(hidden.mean(dim=1))


def _windows(sequence: Tensor, length: int) -> Tensor:
    """(T, ...) -> (W, length, ...): non-overlapping windows; a short sequence is repeated to `length`."""
    if sequence.shape[0] < length:
        repeats = -(-length // sequence.shape[0])
        sequence = sequence.repeat(repeats, *([1] * (sequence.ndim - 1)))
    count = sequence.shape[0] // length
    return sequence[: count * length].reshape(count, length, *sequence.shape[1:])


def gru_probe_accuracy(
    train: list[Tensor],
    train_y: Tensor,
    test: list[Tensor],
    test_y: Tensor,
    vocabulary: int | None,
    window: int = 50,
    epochs: int = 15,
    seed: int = 0,
) -> float:
    """Train `GRUProbe` on windows of `window` frames of the training sequences; return utterance accuracy.

    Sequences are (T,) or (T, Q) long codes (`vocabulary` codes per level) or (T, C) float
    frames (`vocabulary` None, standardised with training statistics). A test utterance's
    prediction averages the logits of its windows.
    """
    torch.manual_seed(seed)
    if vocabulary is None:
        frames = torch.cat(train)
        mean, std = frames.mean(dim=0), frames.std(dim=0).clamp_min(1e-6)
        train = [(x - mean) / std for x in train]
        test = [(x - mean) / std for x in test]
    pieces = [_windows(x, window) for x in train]
    inputs = torch.cat(pieces)
    labels = torch.cat([y.repeat(len(p)) for y, p in zip(train_y, pieces)])

    classes = int(max(train_y.max(), test_y.max())) + 1
    input_dim = train[0].shape[-1] if vocabulary is None else 0
    model = GRUProbe(classes, vocabulary, input_dim)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for batch in torch.randperm(len(inputs), generator=generator).split(64):
            loss = nn.functional.cross_entropy(model(inputs[batch]), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    model.eval()
    with torch.no_grad():
        predictions = torch.stack([model(_windows(x, window)).mean(dim=0).argmax() for x in test])
    return float((predictions == test_y).float().mean())


class SpeakerEmbedding:
    """Speaker vector of an utterance: MFCC mean and deviation (c1..c19), projected by LDA.

    `fit` learns the projection from utterances of training speakers. `similarity` is the
    cosine between two utterances' vectors, in [-1, 1].
    """

    def __init__(self, dims: int = 16):
        self.dims = dims
        self.mfcc = MFCCFrames()
        self.mean: np.ndarray | None = None
        self.projection: np.ndarray | None = None

    def statistics(self, waveform: Tensor) -> np.ndarray:
        """Float (samples,) at 16 kHz -> (38,) MFCC statistics without c0 (loudness)."""
        frames = self.mfcc(waveform[None].float())[0, :, 1:]  # (T, 19)
        return frame_statistics(frames).double().numpy()

    def fit(self, waveforms: list[Tensor], speakers: list[str]) -> SpeakerEmbedding:
        """Fit LDA on utterances of at least two speakers; returns self."""
        x = np.stack([self.statistics(w) for w in waveforms])
        labels = np.array(speakers)
        self.mean = x.mean(axis=0)
        within = np.zeros((x.shape[1], x.shape[1]))
        between = np.zeros_like(within)
        for speaker in np.unique(labels):
            group = x[labels == speaker]
            centred = group - group.mean(axis=0)
            within += centred.T @ centred
            offset = (group.mean(axis=0) - self.mean)[:, None]
            between += len(group) * offset @ offset.T
        within += 1e-6 * np.trace(within) / len(within) * np.eye(len(within))
        _, vectors = scipy.linalg.eigh(between, within)
        self.projection = vectors[:, ::-1][:, : self.dims]  # largest between/within ratios first
        return self

    def __call__(self, waveform: Tensor) -> np.ndarray:
        if self.projection is None:
            raise RuntimeError("call SpeakerEmbedding.fit on training utterances first")
        vector = (self.statistics(waveform) - self.mean) @ self.projection
        return vector / max(np.linalg.norm(vector), 1e-12)

    def similarity(self, a: Tensor, b: Tensor) -> float:
        """Cosine similarity of the speaker vectors of two float (samples,) 16 kHz waveforms."""
        return float(self(a) @ self(b))
