"""Retrieval inputs in SigLIP2's setting (``fae.evaluation.retrieval``'s docstring): captions
lowercased and laid out as big_vision's ``tok(bos="no", eos="sticky")`` on a tiny Gemma-style BPE
tokenizer (the class SigLIP2's fixed-resolution checkpoints name) saved with a tiny SigLIP in HF
format, and images squashed whole to the tower's resolution; ``fae eval retrieval`` end to end
against the HF towers fed those inputs by hand."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from fae.cli import main
from fae.errors import ConfigError
from fae.text import CaptionRules, load_text_encoder
from fae.text.encoders import big_vision_ids
from tiny import fae_on, save_tiny_siglip

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

PAD, EOS, BOS = 0, 1, 2  # Gemma's special ids (as in the SigLIP2 checkpoints' tokenizer)
WORDS = ["a", "▁photo", "▁of", "▁a", "▁cat", ".", "▁dog", "▁red", "▁car", "▁on", "▁grass"]


def gemma_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Gemma's five special tokens, single characters (lower and a few upper case), then every
    prefix of WORDS built by left-to-right merges: lowercase words are one piece each, while
    "Photo" or "CAT" fall apart into characters (different ids)."""
    vocab = {"<pad>": PAD, "<eos>": EOS, "<bos>": BOS, "<unk>": 3, "<mask>": 4}
    for char in sorted(set("".join(WORDS)) | set("ACOPT")):
        vocab.setdefault(char, len(vocab))
    merges = []
    for word in WORDS:
        for i in range(1, len(word)):
            if (word[:i], word[i]) not in merges:
                merges.append((word[:i], word[i]))
            vocab.setdefault(word[:i + 1], len(vocab))
    return vocab, merges


@pytest.fixture(scope="module")
def siglip2_style(tmp_path_factory):
    """A tiny random full SigLIP (64 text positions, as SigLIP2) with the Gemma-style tokenizer."""
    import transformers as tf

    folder = tmp_path_factory.mktemp("hf") / "sig2"
    vocab, merges = gemma_vocab()
    tf.GemmaTokenizer(vocab=vocab, merges=merges).save_pretrained(folder)
    full = save_tiny_siglip(folder, vocab_size=len(vocab), text_positions=64)
    return full, folder, vocab


def padded(ids: list[int], length: int = 64) -> list[int]:
    return ids + [PAD] * (length - len(ids))


def test_big_vision_layout_sticky_eos_and_right_padding():
    ids, mask = big_vision_ids([[5, 6], [5, 6, 7], [5, 6, 7, 8, 9]], max_length=4, eos_id=EOS, pad_id=PAD)
    assert ids.tolist() == [[5, 6, EOS, PAD], [5, 6, 7, EOS], [5, 6, 7, EOS]]  # cut: EOS stays last
    assert mask.tolist() == [[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 1]]


def test_caption_ids_lowercased_no_bos_eos_then_pad_to_64(siglip2_style):
    _, folder, v = siglip2_style
    rules = CaptionRules(lowercase=True, big_vision=True)
    enc = load_text_encoder("siglip-text", weights=str(folder), max_length=64, rules=rules)
    ids, mask = enc.tokenize(["A Photo of a CAT.", "a photo of a cat."])
    lower = [v["a"], v["▁photo"], v["▁of"], v["▁a"], v["▁cat"], v["."], EOS]
    assert ids.tolist() == [padded(lower), padded(lower)]  # the mixed-case caption reads as lowercase
    assert ids.shape == (2, 64) and mask.sum(1).tolist() == [7, 7] and BOS not in ids

    cased = load_text_encoder("siglip-text", weights=str(folder), max_length=64,
                              rules=CaptionRules(lowercase=False, big_vision=True))
    mixed = [v["A"], v["▁"], v["P"], v["h"], v["o"], v["t"], v["o"], v["▁of"], v["▁a"], v["▁"], v["C"], v["A"],
             v["T"], v["."], EOS]
    assert cased.tokenize(["A Photo of a CAT."])[0].tolist() == [padded(mixed)]

    short = load_text_encoder("siglip-text", weights=str(folder), max_length=4, rules=rules)
    assert short.tokenize(["A photo of a cat."])[0].tolist() == [[v["a"], v["▁photo"], v["▁of"], EOS]]

    # the tokenizer's own call (before issue 30): Gemma pads on the left, and no EOS follows the caption
    own = load_text_encoder("siglip-text", weights=str(folder), max_length=64)
    old = own.tokenize(["A Photo of a CAT."])[0][0].tolist()
    assert old == [PAD] * (64 - len(mixed) + 1) + mixed[:-1]


def test_pooled_text_embedding_is_the_towers_on_those_ids(siglip2_style):
    full, folder, v = siglip2_style
    enc = load_text_encoder("siglip-text", weights=str(folder), max_length=64,
                            rules=CaptionRules(lowercase=True, big_vision=True))
    out = enc.encode(["A Photo of a CAT."])
    ids = torch.tensor([padded([v["a"], v["▁photo"], v["▁of"], v["▁a"], v["▁cat"], v["."], EOS])])
    with torch.no_grad():
        ref = full.text_model(input_ids=ids).pooler_output
    torch.testing.assert_close(out.pooled, ref)
    assert enc.identity()["caption_rules"] == {"lowercase": True, "big_vision": True}


def _stripes(path) -> None:
    """A 16 x 48 (H x W) image: red, green and blue thirds from left to right."""
    arr = np.zeros((16, 48, 3), dtype=np.uint8)
    for third in range(3):
        arr[:, 16 * third:16 * (third + 1), third] = 255
    Image.fromarray(arr).save(path)


def test_squash_resizes_the_whole_image_and_differs_from_the_centre_crop(tmp_path, siglip2_style):
    from fae.backbones import load_backbone
    from fae.data.imagefolder import ImageFiles
    from fae.data.karpathy import squashed_images

    _stripes(tmp_path / "wide.png")
    image, index = squashed_images([tmp_path / "wide.png"], 16)[0]
    want = np.asarray(Image.open(tmp_path / "wide.png").convert("RGB").resize((16, 16), Image.BILINEAR))
    assert image.dtype == torch.uint8 and index == 0
    assert torch.equal(image, torch.from_numpy(want.copy()).permute(2, 0, 1))
    assert image[:, :, 0].tolist() == [[255] * 16, [0] * 16, [0] * 16]  # the red third is kept
    assert image[:, :, -1].tolist() == [[0] * 16, [0] * 16, [255] * 16]  # and the blue one
    cropped = ImageFiles([tmp_path / "wide.png"], image_size=16)[0][0]
    assert cropped[:, :, 0].tolist() == [[0] * 16, [255] * 16, [0] * 16]  # the crop keeps green only
    # then the backbone: SigLIP's rescale 1/255 and normalise with mean = std = 0.5, no further resize
    backbone = load_backbone("siglip", weights=str(siglip2_style[1]))
    torch.testing.assert_close(backbone.preprocess(image[None]), image[None].float() / 255 * 2 - 1)


def test_eval_retrieval_defaults_follow_siglip2(tmp_path, capsys, siglip2_style):
    from test_retrieval import _brute_force, _karpathy

    from fae.backbones import load_backbone

    full, folder, v = siglip2_style
    path, images, captions = _karpathy(tmp_path)
    captions[1][0] = "A RED Car"  # the lowercase rule must read it as "a red car"
    data = json.loads(path.read_text())
    data["images"][2]["sentences"][0]["raw"] = "A RED Car"  # image 1 (entry 1 is a train image)
    path.write_text(json.dumps(data))
    info = load_backbone("siglip", weights=str(folder)).info
    fae = fae_on(info, seed=1).eval()
    fae.save_pretrained(tmp_path / "fae")
    assert main(["eval", "retrieval", "--fae", str(tmp_path / "fae"), "--images", str(images),
                 "--captions", str(path), "--out", str(tmp_path / "r.json"), f"backbone_weights={folder}",
                 f"text_weights={folder}", "batch_size=3", "progress=false"]) == 0
    result = json.loads(capsys.readouterr().out.splitlines()[0])
    assert (result["image_preprocess"], result["text_lowercase"], result["text_tokens"]) == \
        ("squash", True, "big_vision")
    assert result["text_max_length"] == 64

    # by hand: PIL bilinear squash of each whole image to 16 px; ids = lowercase pieces + EOS + pads
    files = sorted((images / "val2014").iterdir())
    squashed = [np.asarray(Image.open(f).convert("RGB").resize((16, 16), Image.BILINEAR)) for f in files]
    pixels = torch.from_numpy(np.stack(squashed)).permute(0, 3, 1, 2).float() / 255 * 2 - 1
    flat = [c for group in captions for c in group]
    owner = [i for i, group in enumerate(captions) for _ in group]
    ids = [padded(_pieces(caption.lower().split(), v) + [EOS]) for caption in flat]
    with torch.no_grad():
        vision = full.vision_model(pixel_values=pixels)
        recon = fae.decode_features(fae.encode(vision.last_hidden_state))
        embeddings = {"raw": vision.pooler_output, "reconstructed": full.vision_model.head(recon)}
        texts = full.text_model(input_ids=torch.tensor(ids)).pooler_output
    for kind, image_emb in embeddings.items():
        t2i, i2t = _brute_force(image_emb, texts, owner)
        for k in (1, 5):
            assert result[f"t2i_top{k}_{kind}"] == pytest.approx(np.mean([r < k for r in t2i]))
            assert result[f"i2t_top{k}_{kind}"] == pytest.approx(np.mean([r < k for r in i2t]))


def _pieces(words: list[str], v: dict[str, int]) -> list[int]:
    """Gemma pieces of a lowercase caption: the first word as is, the others with their leading "▁"
    (each word is one piece of the tiny vocabulary, or its characters when it is not)."""
    out = []
    for i, word in enumerate(words):
        piece = word if i == 0 else "▁" + word
        out.extend([v[piece]] if piece in v else [v[c] for c in piece])
    return out


def test_retrieval_config_rejects_unknown_preprocessing():
    from fae.evaluation.config import RetrievalConfig

    base = dict(fae="f", images="i", captions="c")
    with pytest.raises(ConfigError, match="image_preprocess"):
        RetrievalConfig(**base, image_preprocess="crop").validate()
    with pytest.raises(ConfigError, match="text_tokens"):
        RetrievalConfig(**base, text_tokens="gemma").validate()
    RetrievalConfig(**base, image_preprocess="center_crop", text_tokens="tokenizer", text_lowercase=False).validate()
