"""The demo's "Codebook features" tab: read and steer the discrete codes of a `CodebookLM`.

The code browser shows where one code of one site and group fires on held-out data. The code
search lists the codes that fire most precisely on a token set (text models) or on one FSM
state (TokFSM). Steering continues a prompt twice from the same seed, without and with chosen
codes forced on.

The tab offers two models: the text model named by `TEXT_MODEL_ENV`, else the registered
`DEFAULT_TEXT_MODEL`, and the TokFSM model named by `TOKFSM_MODEL_ENV`, else
`DEFAULT_TOKFSM_MODEL`. Each variable contains a registered model name or a checkpoint folder.
`build_tab(models=...)` replaces both. A model loads when a request first needs it, so the
tab builds before the checkpoints exist, and a request for a missing one raises an error
that gives the command that trains it.

The browser and the search read a held-out sample, recorded once per model:

- text: up to `SAMPLE_WINDOWS` windows of `WINDOW_TOKENS` tokens, evenly spaced over the
  documents of the corpus test split, tokenized by the model's own tokenizer;
- TokFSM: `SAMPLE_WINDOWS` walks of `FSM()`, the machine that `vqkit train codebook-lm`
  trains on, drawn with seed `HELD_OUT_FSM_SEED`.

Its events are API endpoints for gradio_client: "/codebook_load_model",
"/codebook_browse_code", "/codebook_find_codes", "/codebook_pick_code" and "/codebook_steer".

This module lays out the tab and wires its events. `codebook_features_models` loads the models
and records the held-out sample, `codebook_features_browse` contains the code browser, the code
search and the input checks, and `codebook_features_steering` contains steering.
"""

from __future__ import annotations

from collections.abc import Sequence

import gradio as gr

from vqkit.demos.codebook_features_browse import (
    CONTEXT_HEADERS,
    CONTEXT_STATES,
    CONTEXT_TOKENS,
    DEFAULT_MIN_COUNT,
    MAX_CONTEXTS,
    SEARCH_HEADERS,
    SPACE_MARK,
    browse_code,
    find_codes,
    pick_code,
)
from vqkit.demos.codebook_features_models import (
    DEFAULT_TEXT_MODEL,
    DEFAULT_TOKFSM_MODEL,
    HELD_OUT_FSM_SEED,
    SAMPLE_WINDOWS,
    TEXT_MODEL_ENV,
    TOKFSM_MODEL_ENV,
    LoadedModel,
    ModelChoice,
    ModelStore,
    default_choices,
    describe_choices,
    describe_sample,
    held_out_windows,
    text_windows,
)
from vqkit.demos.codebook_features_steering import (
    MAX_NEW_TOKENS,
    render_fsm_tokens,
    steer,
)
from vqkit.evals.codebook_text_metrics import TOKEN_SETS

# The tab's API: build_tab, and the names that callers and tests use, re-exported from the
# modules that define them.
__all__ = [
    "CONTEXT_STATES",
    "CONTEXT_TOKENS",
    "DEFAULT_TEXT_MODEL",
    "DEFAULT_TOKFSM_MODEL",
    "HELD_OUT_FSM_SEED",
    "MAX_CONTEXTS",
    "SAMPLE_WINDOWS",
    "SPACE_MARK",
    "TEXT_MODEL_ENV",
    "TOKFSM_MODEL_ENV",
    "LoadedModel",
    "ModelChoice",
    "build_tab",
    "default_choices",
    "describe_choices",
    "held_out_windows",
    "render_fsm_tokens",
    "text_windows",
]


def describe_model(store: ModelStore, model_name: str | None) -> tuple[str, gr.Dropdown, gr.Dropdown]:
    """Load the model and return its summary and the site dropdowns of the browser and of steering."""
    loaded = store.get(model_name)
    model = loaded.model
    sites = model.sites
    bottleneck = model.bottleneck(sites[0])
    attention_sites = sum(site.endswith(".attn") for site in sites)
    task = "TokFSM" if loaded.fsm is not None else "text"
    groups = []
    if attention_sites:
        groups.append(
            f"Each of the {attention_sites} attention sites has {model.config.num_attention_heads} groups, one per head."
        )
    if len(sites) > attention_sites:
        groups.append(f"Each of the {len(sites) - attention_sites} MLP sites has one group.")
    # Every bottleneck of a CodebookLM gets the same codebook_size and k from its constructor.
    summary = (
        f"`{loaded.choice.name}`: a {task} model with {len(sites)} codebook sites. "
        f"{' '.join(groups)} Every group has {bottleneck.codebook_size} codes "
        f"(ids 0 to {bottleneck.codebook_size - 1}), and k = {bottleneck.k} of them are active at each token. "
        f"The code browser and search read {describe_sample(loaded)}."
    )
    return summary, gr.Dropdown(choices=sites, value=sites[0]), gr.Dropdown(choices=sites, value=sites[0])


def build_tab(models: Sequence[ModelChoice] | None = None) -> None:
    """Create the tab's components inside the current gradio context.

    `models` defaults to `default_choices()`. No model loads until a request needs it.
    """
    store = ModelStore(models if models is not None else default_choices())
    gr.Markdown(
        "Codebook features: every attention and MLP output of the language model passes through a "
        "sparse codebook, and the few codes active at each token are discrete, readable features. "
        "Browse where a code fires, find codes for a set of tokens, or force codes on while generating."
    )
    gr.Markdown(describe_choices(list(store.choices.values())))
    model = gr.Dropdown(choices=list(store.choices), value=None, label="Model (loads when chosen)")
    model_summary = gr.Markdown()

    gr.Markdown("### Code browser")
    with gr.Row():
        browse_site = gr.Dropdown(choices=[], value=None, label="Site", allow_custom_value=True)
        browse_group = gr.Number(label="Group (attention head; 0 at MLP sites)", value=0, precision=0)
        browse_code_id = gr.Number(label="Code id", value=0, precision=0)
        browse_button = gr.Button("Show contexts", variant="primary")
    browse_summary = gr.Markdown()
    contexts = gr.Dataframe(
        headers=CONTEXT_HEADERS, interactive=False, wrap=True, label="Contexts where the code fires"
    )

    gr.Markdown("### Find codes")
    with gr.Row():
        target = gr.Dropdown(
            choices=list(TOKEN_SETS),
            value="digits",
            allow_custom_value=True,
            label="Token set (text models) or state number (TokFSM)",
        )
        min_count = gr.Number(label="Minimum activations per code", value=DEFAULT_MIN_COUNT, precision=0)
        search_button = gr.Button("Find codes")
    search_summary = gr.Markdown()
    search_table = gr.Dataframe(headers=SEARCH_HEADERS, interactive=False, label="Codes by precision")
    search_pick = gr.Dropdown(choices=[], value=None, label="Open a code in the browser", allow_custom_value=True)

    gr.Markdown("### Steering")
    prompt = gr.Textbox(label="Prompt (text, or TokFSM states as digits such as 4217)", lines=2)
    with gr.Row():
        steer_site = gr.Dropdown(choices=[], value=None, label="Site", allow_custom_value=True)
        steer_group = gr.Number(label="Group (attention head; 0 at MLP sites)", value=0, precision=0)
        steer_codes = gr.Textbox(label="Code ids to force on, comma-separated (at most k)")
        max_new_tokens = gr.Number(label=f"Max new tokens (1 to {MAX_NEW_TOKENS})", value=32, precision=0)
        seed = gr.Number(label="Seed", value=0, precision=0)
    steer_button = gr.Button("Generate", variant="primary")
    steer_summary = gr.Markdown()
    with gr.Row():
        unsteered = gr.Textbox(label="Unsteered", lines=6, interactive=False)
        steered = gr.Textbox(label="Steered", lines=6, interactive=False)

    # Named signatures, so the API lists each endpoint's inputs by name.
    def load_model(model_name: str | None):
        return describe_model(store, model_name)

    def browse(model_name: str | None, site: str | None, group: float, code: float):
        return browse_code(store, model_name, site, group, code)

    def search(model_name: str | None, target: str | None, min_count: float):
        return find_codes(store, model_name, target, min_count)

    def generate_both(
        model_name: str | None,
        prompt: str,
        site: str | None,
        group: float,
        codes: str,
        max_new_tokens: float,
        seed: float,
    ):
        return steer(store, model_name, prompt, site, group, codes, max_new_tokens, seed)

    model.change(
        load_model, inputs=model, outputs=[model_summary, browse_site, steer_site], api_name="codebook_load_model"
    )
    browse_inputs = [model, browse_site, browse_group, browse_code_id]
    browse_outputs = [browse_summary, contexts]
    browse_button.click(browse, inputs=browse_inputs, outputs=browse_outputs, api_name="codebook_browse_code")
    search_button.click(
        search,
        inputs=[model, target, min_count],
        outputs=[search_summary, search_table, search_pick],
        api_name="codebook_find_codes",
    )
    # `input` fires on a user's choice only, not when the search replaces the choices.
    search_pick.input(
        pick_code,
        inputs=search_pick,
        outputs=[browse_site, browse_group, browse_code_id],
        api_name="codebook_pick_code",
    ).success(browse, inputs=browse_inputs, outputs=browse_outputs, api_name=False)
    steer_button.click(
        generate_both,
        inputs=[model, prompt, steer_site, steer_group, steer_codes, max_new_tokens, seed],
        outputs=[steer_summary, unsteered, steered],
        api_name="codebook_steer",
    )
