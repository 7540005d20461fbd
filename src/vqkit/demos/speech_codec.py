"""The demo's "Speech codec" tab: encode speech to discrete codes, then decode them in the input's voice or another.

The model dropdown offers the registered codecs in `MODELS`. With the prompt voice "same as
input", the codes are decoded with the input itself as the voice prompt (reconstruction). With
one of the shipped voices (`vqkit.demos.speech_prompts`), the same codes are decoded with that
voice's clip as the prompt (voice conversion). The RVQ baseline has no prompt input, so it
always reconstructs. The summary gives the bitrate, the code statistics and the first codes.

A model loads when a request first needs it and stays loaded, so the tab builds before the
checkpoints exist. A request for a missing checkpoint raises an error that gives its train
command. Recordings longer than `MAX_SECONDS` are rejected.

Its events are API endpoints for gradio_client: "/speech_load_example" and "/speech_encode_decode".
The input audio reaches the tab as a file path and is read with soundfile, so FLAC, OGG and
MP3 uploads work without ffmpeg.

Input conversion, the duration limit, the prompt voice choices, the summary and the code plot
are in `vqkit.demos.speech_codec_view`, which does not import gradio.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Sequence

import gradio as gr
import numpy as np
from torch import Tensor

from vqkit import registry
from vqkit.data.speech_synth import HELDOUT_SPEAKERS
from vqkit.demos.speech_codec_view import (
    MAX_SECONDS,
    SAME_AS_INPUT,
    CodecResult,
    GradioAudio,
    VoicePrompts,
    audio_to_waveform,
    format_duration,
    plot_codes,
    prompt_choices,
    read_audio_file,
    resolve_prompt,
    summarize,
    to_gradio_audio,
    voice_label,
)
from vqkit.demos.speech_prompts import load_voice_prompts
from vqkit.tokenizers.speech import SpeechCodec

logger = logging.getLogger(__name__)

MODELS = ("speech-lscodec-50hz", "speech-lscodec-25hz", "speech-rvq-25hz")
DEFAULT_MODEL = "speech-lscodec-50hz"


# ---- models -----------------------------------------------------------------------------------


def load_codec(name: str) -> SpeechCodec:
    """Load the registered codec `name` and its vocoder, in eval mode.

    Raises FileNotFoundError, with the train command, when the codec's or the vocoder's
    checkpoint folder is missing.
    """
    codec = SpeechCodec.from_pretrained(name)
    # The vocoder would load on the first decode. Loading it here reports a missing vocoder
    # checkpoint as a load error of the model.
    _ = codec.vocoder
    return codec.eval()


class CodecStore:
    """The tab's codecs by name, loaded on first use with `load_codec` and kept while the app runs.

    A codec that fails to load is not kept, so the next request tries again, for example once
    its checkpoint has been trained.
    """

    def __init__(self, names: Sequence[str] = MODELS):
        self.names = tuple(names)
        self._loaded: dict[str, SpeechCodec] = {}
        self._lock = threading.Lock()

    def get(self, name: str | None) -> SpeechCodec:
        """Return the codec `name`, loading it on first use. Raises gr.Error when it is unknown or cannot load."""
        if name not in self.names:
            raise gr.Error(f"unknown model {name!r}: choose one of {', '.join(self.names)}.")
        with self._lock:
            if name not in self._loaded:
                started = time.perf_counter()
                try:
                    self._loaded[name] = load_codec(name)
                except (FileNotFoundError, ValueError, OSError, RuntimeError) as error:
                    logger.error("Speech codec tab: cannot load %r: %s", name, error)
                    message = f"Model {name!r} could not be loaded: {error}"
                    raise gr.Error(message) from None
                seconds = time.perf_counter() - started
                logger.info("Loaded speech codec %r in %.1f s", name, seconds)
            return self._loaded[name]


def describe_models(names: Sequence[str] = MODELS) -> str:
    """Return Markdown that lists the codecs and gives the train command of each missing checkpoint."""
    lines = []
    for name in names:
        entry = registry.get_model_entry(name)
        if entry.path.is_dir():
            lines.append(f"- `{name}`: {entry.description}.")
        elif entry.train_command:
            command = entry.train_command
            lines.append(f"- `{name}`: not trained yet. Train it with `{command}`.")
        else:
            lines.append(f"- `{name}`: checkpoint folder {entry.path} not found.")
    return "\n".join(lines)


# ---- voice prompts ----------------------------------------------------------------------------


def load_example(speaker_id: str | None, prompts: VoicePrompts) -> GradioAudio | None:
    """Return the shipped clip of `speaker_id` as gradio audio, or None when nothing is selected."""
    if not speaker_id:
        return None
    if speaker_id not in prompts:
        raise gr.Error(f"unknown example voice {speaker_id!r}: choose one of {', '.join(prompts) or 'none'}.")
    waveform, sample_rate = prompts[speaker_id]
    return to_gradio_audio(waveform, sample_rate)


# ---- running the codec ------------------------------------------------------------------------


def run_codec(
    codec: SpeechCodec, waveform: Tensor, sample_rate: int, prompt: tuple[Tensor, int] | None = None
) -> CodecResult:
    """Encode a float (samples,) waveform at `sample_rate` Hz and decode its codes.

    The decoder's voice prompt is `prompt`, a (waveform, sample rate) pair, or the input itself
    when it is None. Codecs without a prompt input ignore `prompt`. Raises ValueError for input
    that the codec rejects.
    """
    codes = codec.encode(waveform, sample_rate)
    prompt_waveform, prompt_rate = prompt or (waveform, sample_rate)
    audio = codec.decode(codes, prompt=prompt_waveform, prompt_sample_rate=prompt_rate)
    # Decoding returns whole frames, and the encoder zero-pads the last one.
    length = math.ceil(waveform.shape[-1] * codec.sample_rate / sample_rate)
    return CodecResult(
        codes=codes[0].cpu(),
        audio=audio[0, :length].cpu(),
        input_seconds=waveform.shape[-1] / sample_rate,
        converted=prompt is not None and codec.use_prompt,
    )


def encode_decode(
    store: CodecStore, prompts: VoicePrompts, model_name: str, audio: str | GradioAudio | None, voice: str | None
) -> tuple[GradioAudio, str, np.ndarray]:
    """Run the codec on a sound file path or gradio numpy audio; return the decoded audio, the summary and the plot.

    Raises gr.Error for invalid input, a model that cannot load and a codec failure.
    """
    try:
        if isinstance(audio, tuple):
            waveform, sample_rate = audio_to_waveform(audio)
        else:
            waveform, sample_rate = read_audio_file(audio)
        prompt = resolve_prompt(voice, prompts)
    except ValueError as error:
        raise gr.Error(str(error)) from None
    codec = store.get(model_name)

    started = time.perf_counter()
    try:
        result = run_codec(codec, waveform, sample_rate, prompt)
    except ValueError as error:
        raise gr.Error(str(error)) from None
    except RuntimeError as error:
        seconds = waveform.shape[-1] / sample_rate
        logger.exception("Speech codec %s failed on %.1f s of audio", model_name, seconds)
        raise gr.Error(f"The codec {model_name!r} failed: {error}") from None
    seconds, frames = time.perf_counter() - started, result.codes.shape[0]
    logger.info("Speech codec %s: %d frames in %.1f s", model_name, frames, seconds)

    decoded = to_gradio_audio(result.audio, codec.sample_rate)
    summary = summarize(codec, model_name, result, voice)
    return (decoded, summary, plot_codes(result.codes, codec.codebook_size, codec.frame_rate))


# ---- layout -----------------------------------------------------------------------------------


def build_tab() -> None:
    """Create the tab's components and events inside the current gradio context."""
    store = CodecStore(MODELS)
    try:
        prompts = load_voice_prompts()
        held_out = sum(speaker in HELDOUT_SPEAKERS for speaker in prompts)
        prompts_note = (
            f"The {len(prompts)} shipped voices are synthetic speakers of the vqkit speech "
            f"corpus, {held_out} of them held out from training."
        )
    except (FileNotFoundError, RuntimeError) as error:
        logger.warning("Speech codec tab: no voice prompts: %s", error)
        prompts = {}
        prompts_note = f"**No shipped voices**, so only reconstruction works: {error}"

    gr.Markdown(
        "Encode speech into discrete codes and decode it again. With the prompt voice "
        f"*{SAME_AS_INPUT}* the decoder reconstructs the input. With another voice it decodes the "
        f"same codes in that voice. Recordings longer than {format_duration(MAX_SECONDS)} are "
        f"rejected. A model loads when first used.\n\nModels when the demo started:\n\n"
        f"{describe_models()}\n\n{prompts_note}"
    )
    with gr.Row():
        with gr.Column():
            model = gr.Dropdown(list(MODELS), value=DEFAULT_MODEL, label="Model")
            example = gr.Dropdown(
                choices=[(voice_label(speaker), speaker) for speaker in prompts],
                value=None,
                label="Example input (a shipped voice clip)",
            )
            audio = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Input speech")
            voice = gr.Dropdown(choices=prompt_choices(prompts), value=SAME_AS_INPUT, label="Prompt voice")
            button = gr.Button("Encode and decode", variant="primary")
        with gr.Column():
            output = gr.Audio(label="Decoded audio (16 kHz)", type="numpy", interactive=False)
            plot = gr.Image(label="Code ids over time", type="numpy", format="png", interactive=False)
            summary = gr.Markdown()

    # Named signatures, so the API lists the inputs by name.
    def load_example_clip(speaker_id: str | None) -> GradioAudio | None:
        return load_example(speaker_id, prompts)

    def encode_decode_audio(model_name: str, recording: str | None, voice_id: str | None):
        return encode_decode(store, prompts, model_name, recording, voice_id)

    example.change(load_example_clip, inputs=example, outputs=audio, api_name="speech_load_example")
    button.click(
        encode_decode_audio,
        inputs=[model, audio, voice],
        outputs=[output, summary, plot],
        api_name="speech_encode_decode",
    )
