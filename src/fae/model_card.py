"""Model cards: the ``README.md`` beside every export's ``config.json`` + ``model.safetensors``.

A card is what the Hugging Face Hub shows for a model repo: YAML front matter (``library_name``,
``license``, ``tags``, ``pipeline_tag``) and a Markdown body saying what the model is (its kind,
parameter count and shapes, read from its config), its config, the metrics it was evaluated with
and how, how to load it, and the paper. ``Exportable.save_pretrained`` writes it (atomically, with
"not evaluated yet"); :func:`update_model_card_metrics` fills the metrics section later, when an
evaluation has run on the export, and :func:`name_model_card` puts the Hub repo id into the
loading lines when the folder is pushed. Both rewrite only their own section, found between
HTML comment markers, so the rest of a card (edits included) is kept.

The card describes the model; it is not the model: loading never reads it, and a folder's content
identity (``fae.freshness``) leaves it out, so writing metrics into it does not make what was
derived from the export stale.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml

from fae.errors import CheckpointError
from fae.io import atomic_write

CARD_FILE = "README.md"
PLACEHOLDER = "path/to/export"  # the name in the loading lines until the folder is pushed to a repo
NOT_EVALUATED = "Not evaluated yet."
PAPER_TITLE = "One Layer Is Enough: Adapting Pretrained Visual Encoders for Image Generation"
PAPER_URL = "https://arxiv.org/abs/2512.07829"
CITATION = """@inproceedings{gao2026onelayer,
  title         = {One Layer Is Enough: Adapting Pretrained Visual Encoders for Image Generation},
  author        = {Gao and Chen and Chen and Gu},
  booktitle     = {Findings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year          = {2026},
  eprint        = {2512.07829},
  archivePrefix = {arXiv}
}"""
BASE_TAGS = ("fae", "feature-autoencoder", "image-generation", "arxiv:2512.07829")
LONG_LIST = 16  # number lists longer than this are abridged in the card's config (config.json has them)
_SCALAR_LIST = re.compile(r"\[([^\[\]{}]*)\]")  # a JSON list of scalars, shown on one line


@dataclass(frozen=True)
class CardKind:
    """What a card says about one export format.

    Args:
        title: the card's heading.
        module, cls: where the loading class is imported from (``from module import cls``).
        describe: config -> (one paragraph on what the model is, (name, value) rows of its shapes).
        tags: Hub tags added to ``BASE_TAGS``.
        pipeline_tag: the Hub task, where one fits (None: no Hub task describes it).
        cli: the command line that uses the export (``{name}`` is the export), or "".
    """

    title: str
    module: str
    cls: str
    describe: Callable[[dict[str, Any]], tuple[str, list[tuple[str, str]]]]
    tags: tuple[str, ...] = ()
    pipeline_tag: str | None = None
    cli: str = ""


# ------------------------------------------------------------------------------------------ kinds


def _shape(values: Any) -> str:
    return " × ".join(str(v) for v in values) if isinstance(values, (list, tuple)) else str(values)


def _image(channels: Any, size: Any) -> str:
    return _shape([channels, size, size])


def _describe_fae(config: dict[str, Any]) -> tuple[str, list[tuple[str, str]]]:
    backbone, cfg = config.get("backbone", {}), config.get("config", {})
    encoder, decoder = cfg.get("encoder", {}), cfg.get("decoder", {})
    tokens = _shape([*backbone.get("grid", []), backbone.get("dim")])
    encoder_text = {"attention": "one self-attention layer (the paper's encoder)", "linear": "a per-token linear map",
                    "transformer": f"a {encoder.get('depth')}-block transformer"}.get(encoder.get("kind"), "an encoder")
    pixel = (config.get("pixel_decoder") or {}).get("pixel_decoder")
    image = _image(pixel['out_channels'], pixel.get('output_size') or pixel['image_size']) if pixel else ""
    text = (f"A Feature Auto-Encoder (FAE): {encoder_text} adapts the `{backbone.get('name')}` encoder's frozen "
            f"patch tokens ({tokens}, at {backbone.get('resolution')} px) into a "
            f"{_shape(config.get('latent_shape'))} latent (c × h × w) for a generator to model; a transformer "
            f"feature decoder maps latents back to the tokens"
            + (f", and a pixel decoder renders them as {image} images." if pixel else
               "; it has no pixel decoder yet (features only).")
            + " The backbone is not stored here: it is loaded by name when images are encoded.")
    rows = [("backbone", f"`{backbone.get('name')}` at {backbone.get('resolution')} px, tokens {tokens}"),
            ("latent shape (c × h × w)", _shape(config.get("latent_shape"))),
            ("encoder", f"{encoder.get('kind')}, {encoder.get('heads')} heads"),
            ("feature decoder", f"depth {decoder.get('depth')}, width {decoder.get('width') or backbone.get('dim')}"),
            ("pixel decoder", f"depth {pixel['depth']}, width {pixel['dim']} -> {image} images" if pixel else "none")]
    return text, rows


def _describe_pixel_decoder(config: dict[str, Any]) -> tuple[str, list[tuple[str, str]]]:
    pixel = config.get("pixel_decoder", {})
    tokens = _shape([*config.get("grid", []), config.get("token_dim")])
    image = _image(pixel.get('out_channels'), pixel.get('output_size') or pixel.get('image_size'))
    text = (f"An FAE pixel decoder: a ViT that renders backbone-shaped tokens ({tokens}) as {image} images "
            "(the paper's stage Ib decoder, trained on noisy frozen-backbone features).")
    return text, [("input tokens", tokens), ("output images", image),
                  ("network", f"depth {pixel.get('depth')}, width {pixel.get('dim')}, {pixel.get('heads')} heads")]


def _describe_pixel_autoencoder(config: dict[str, Any]) -> tuple[str, list[tuple[str, str]]]:
    cfg = config.get("config", {})
    image = _image(cfg.get('image_channels'), cfg.get('image_size'))
    text = (f"A pixel-space convolutional VAE ({image} images <-> {_shape(config.get('latent_shape'))} latents): "
            "the baseline latent space FAE's latents are compared with.")
    return text, [("images", image), ("latent shape (c × h × w)", _shape(config.get("latent_shape"))),
                  ("width", str(cfg.get("width")))]


def _fae_row(config: dict[str, Any]) -> tuple[str, str]:
    fae = config.get("fae") or {}
    if not fae.get("identity"):
        return "FAE", "not recorded"
    return "FAE", f"`{fae.get('backbone')}` FAE, identity `{fae['identity'][:12]}…`"


def _latent(model: dict[str, Any]) -> str:
    size = model.get("latent_size")
    return _shape([model.get("latent_channels"), size, size])


def _classes(model: dict[str, Any]) -> str:
    n = model.get("num_classes", 0)
    return f"class-conditional over {n} classes" if n else "unconditional"


def _describe_generator(config: dict[str, Any]) -> tuple[str, list[tuple[str, str]]]:
    model, sampling = config.get("model", {}), config.get("sampling", {})
    style = {"sit": "SiT", "lightningdit": "LightningDiT"}.get(model.get("style"), model.get("style"))
    text = (f"A {style} diffusion transformer (depth {model.get('depth')}, width {model.get('dim')}, "
            f"patch {model.get('patch_size')}) trained by "
            f"flow matching on FAE latents ({_latent(model)}), {_classes(model)}. Samples are latents: decode them "
            "with the FAE it was trained for.")
    return text, [("latent shape (c × h × w)", _latent(model)), ("conditioning", _classes(model)),
                  ("network", f"{style}, depth {model.get('depth')}, width {model.get('dim')}, "
                              f"{model.get('heads')} heads"),
                  ("default sampler", f"{sampling.get('method')}, {sampling.get('steps')} steps, "
                                      f"CFG {sampling.get('cfg_scale')}"),
                  _fae_row(config)]


def _describe_flow_generator(config: dict[str, Any]) -> tuple[str, list[tuple[str, str]]]:
    model = config.get("model", {})
    text = (f"A STARFlow-style autoregressive normalizing flow (a deep block of depth {model.get('deep_layers')}, "
            f"{model.get('shallow_blocks')} shallow block(s), width {model.get('dim')}) on FAE latents "
            f"({_latent(model)}), {_classes(model)}. Samples are latents: decode them with the FAE it was trained for.")
    return text, [("latent shape (c × h × w)", _latent(model)), ("conditioning", _classes(model)),
                  ("network", f"deep block depth {model.get('deep_layers')}, {model.get('shallow_blocks')} shallow "
                              f"block(s) of depth {model.get('shallow_layers')}, width {model.get('dim')}"),
                  _fae_row(config)]


def _describe_t2i_generator(config: dict[str, Any]) -> tuple[str, list[tuple[str, str]]]:
    model, text_cfg = config.get("model", {}), config.get("text") or {}
    encoder = f"`{text_cfg['encoder']}`" if text_cfg.get("encoder") else "not recorded"
    text = (f"A text-to-image MMDiT (depth {model.get('depth')}, width {model.get('dim')}) trained by flow "
            f"matching on FAE latents ({_latent(model)}), conditioned on a frozen text encoder's embeddings "
            f"({encoder}). Samples are latents: decode them with the FAE it was trained for.")
    return text, [("latent shape (c × h × w)", _latent(model)), ("text encoder", encoder),
                  ("network", f"depth {model.get('depth')}, width {model.get('dim')}, {model.get('heads')} heads"),
                  _fae_row(config)]


_SAMPLE = "fae sample --generator {generator} --fae {fae} --num 64 --out samples.npz"
KINDS: dict[str, CardKind] = {
    "fae-autoencoder": CardKind("FAE feature autoencoder", "fae.autoencoder", "FAE", _describe_fae,
                                ("autoencoder",), None, _SAMPLE.format(generator="GENERATOR", fae="{name}")),
    "fae-pixel-decoder": CardKind("FAE pixel decoder", "fae.autoencoder.pixel_decoder", "PixelDecoder",
                                  _describe_pixel_decoder, ("pixel-decoder",)),
    "fae-pixel-autoencoder": CardKind("Pixel autoencoder (FAE baseline)", "fae.autoencoder.pixel_autoencoder",
                                      "PixelAutoencoder", _describe_pixel_autoencoder, ("autoencoder",)),
    "fae-generator": CardKind("FAE latent diffusion generator", "fae.generation", "Generator", _describe_generator,
                              ("diffusion", "flow-matching"), "unconditional-image-generation",
                              _SAMPLE.format(generator="{name}", fae="FAE")),
    "fae-flow-generator": CardKind("FAE latent normalizing-flow generator", "fae.generation.flow_generator",
                                   "FlowGenerator", _describe_flow_generator, ("normalizing-flow",),
                                   "unconditional-image-generation", _SAMPLE.format(generator="{name}", fae="FAE")),
    "fae-t2i-generator": CardKind("FAE text-to-image generator", "fae.generation", "TextToImageGenerator",
                                  _describe_t2i_generator, ("text-to-image", "flow-matching"), "text-to-image",
                                  _SAMPLE.format(generator="{name}", fae="FAE") + " --prompts prompts.txt"),
}


def card_kind(kind: str) -> CardKind:
    """The card description of export format ``kind`` (a format without one is a KeyError)."""
    if kind not in KINDS:
        raise KeyError(f"no model card description for export format '{kind}' (fae.model_card.KINDS)")
    return KINDS[kind]


# ------------------------------------------------------------------------------------------ rendering


def _section(tag: str, body: str) -> str:
    """A card section fae rewrites later, between two HTML comments (invisible on the Hub)."""
    return f"<!-- fae:{tag} -->\n{body.strip()}\n<!-- /fae:{tag} -->"


def _front_matter(kind: CardKind) -> str:
    meta: dict[str, Any] = {"library_name": "fae", "license": "mit", "tags": [*BASE_TAGS, *kind.tags]}
    if kind.pipeline_tag:
        meta["pipeline_tag"] = kind.pipeline_tag
    return "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n"


def _abridged(value: Any) -> Any:
    """``value`` with number lists longer than ``LONG_LIST`` replaced by a note (per-dim statistics)."""
    if isinstance(value, dict):
        return {k: _abridged(v) for k, v in value.items()}
    if isinstance(value, list):
        if len(value) > LONG_LIST and all(isinstance(v, (int, float)) for v in value):
            return f"<{len(value)} numbers: see config.json>"
        return [_abridged(v) for v in value]
    return value


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value).replace("|", "\\|").replace("\n", " ")


def metrics_body(metrics: Mapping[str, Any] | None, how: str = "") -> str:
    """The metrics section: a name | value table and how it was measured, or "not evaluated yet"."""
    if not metrics:
        return NOT_EVALUATED
    rows = "\n".join(f"| {name} | {_format_value(value)} |" for name, value in metrics.items())
    return f"| metric | value |\n|---|---|\n{rows}\n\n**How:** {how.strip() or 'not stated.'}"


def usage_body(kind: CardKind, name: str) -> str:
    """How to load the export named ``name`` (a folder or a Hub repo id) in Python and on the command line."""
    lines = ["```python", f"from {kind.module} import {kind.cls}", "",
             f'model = {kind.cls}.from_pretrained("{name}")  # an export folder or a Hub repo id owner/name[@revision]',
             "```"]
    if kind.cli:
        lines += ["", "From the command line (any verb that takes an export folder also takes a Hub repo id):", "",
                  "```bash", kind.cli.format(name=name), "```"]
    return "\n".join(lines)


def card_text(kind_name: str, version: int, config: dict[str, Any], parameters: int,
              parts: Mapping[str, int] | None = None, metrics: Mapping[str, Any] | None = None,
              how: str = "", name: str = PLACEHOLDER) -> str:
    """The whole ``README.md`` of an export.

    Args:
        kind_name: the export format (``config.json``'s ``format``).
        version: its format version.
        config: the model's export config (``Exportable.export_config``).
        parameters: the model's parameter count; ``parts``: per sub-module, when it has several.
        metrics, how: what it was evaluated with and how (None: not evaluated yet).
        name: the export's name in the loading lines (a Hub repo id once pushed).
    """
    kind = card_kind(kind_name)
    summary, rows = kind.describe(config)
    count = f"{parameters:,}"
    if parts and len(parts) > 1:
        count += " (" + ", ".join(f"{part} {n:,}" for part, n in parts.items()) + ")"
    table = [("kind", f"`{kind_name}` (format version {version})"), ("parameters", count), *rows]
    facts = "\n".join(f"| {key} | {value} |" for key, value in table)
    config_json = json.dumps(_abridged(config), indent=2)
    config_json = _SCALAR_LIST.sub(lambda m: "[" + " ".join(m[1].split()) + "]", config_json)
    return (f"{_front_matter(kind)}\n# {kind.title}\n\n{summary}\n\n"
            f"Exported by the `fae` library, an implementation of [{PAPER_TITLE}]({PAPER_URL}).\n\n"
            f"## Model\n\n| | |\n|---|---|\n{facts}\n\n"
            f"## Configuration\n\n<details>\n<summary>config.json</summary>\n\n```json\n{config_json}\n```\n\n"
            f"</details>\n\n## Evaluation\n\n{_section('metrics', metrics_body(metrics, how))}\n\n"
            f"## How to use\n\n{_section('usage', usage_body(kind, name))}\n\n"
            f"## Citation\n\n```bibtex\n{CITATION}\n```\n")


# ------------------------------------------------------------------------------------------ files


def _write(path: Path, text: str) -> Path:
    data = text.encode("utf-8")
    return atomic_write(path, lambda f: f.write(data))


def write_model_card(folder: str | Path, kind_name: str, version: int, config: dict[str, Any], parameters: int,
                     parts: Mapping[str, int] | None = None) -> Path:
    """Write ``folder/README.md`` (atomically; "not evaluated yet"); returns its path."""
    return _write(Path(folder) / CARD_FILE, card_text(kind_name, version, config, parameters, parts))


def _replace_section(folder: str | Path, tag: str, body: str) -> Path:
    path = Path(folder) / CARD_FILE
    if not path.is_file():
        raise CheckpointError(f"'{folder}' has no model card ({CARD_FILE}): exports written before fae wrote "
                              "cards have none; load the model and save_pretrained it again")
    text = path.read_text(encoding="utf-8")
    pattern = re.compile(rf"<!-- fae:{tag} -->\n.*?\n<!-- /fae:{tag} -->", re.DOTALL)
    if not pattern.search(text):
        raise CheckpointError(f"'{path}' has no fae {tag} section (<!-- fae:{tag} --> ... <!-- /fae:{tag} -->)")
    return _write(path, pattern.sub(lambda _: _section(tag, body), text, count=1))


def update_model_card_metrics(folder: str | Path, metrics: Mapping[str, Any], how: str) -> Path:
    """Replace the card's metrics section with ``metrics`` (name -> number or text) and ``how``
    they were measured (the data, the number of images, the protocol); returns the card's path."""
    for name, value in metrics.items():
        if not isinstance(value, (int, float, str)):
            raise TypeError(f"metric '{name}' must be a number or text, got {type(value).__name__}")
    return _replace_section(folder, "metrics", metrics_body(metrics, how))


def name_model_card(folder: str | Path, kind_name: str, name: str) -> Path:
    """Put ``name`` (e.g. the Hub repo id the folder is pushed to) into the card's loading lines."""
    return _replace_section(folder, "usage", usage_body(card_kind(kind_name), name))
