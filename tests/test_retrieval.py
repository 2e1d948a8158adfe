"""Text-image retrieval (paper Table 4): ranks against a brute-force sort, the SigLIP attention-pool
head against the HF model's pooled output, the Karpathy reader, and ``fae eval retrieval`` end to
end on a tiny random SigLIP (vision + text towers) saved locally with a tiny captioned folder."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from fae.cli import main
from fae.errors import DataError
from fae.evaluation.retrieval import retrieval_ranks, retrieval_scores
from tiny import fae_on, save_tiny_siglip

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _brute_force(images: torch.Tensor, texts: torch.Tensor, owner: list[int]) -> tuple[list[int], list[int]]:
    """Sort every similarity row: T->I rank = position of the caption's image; I->T rank = position
    of the first of the image's captions."""
    images = images / images.norm(dim=1, keepdim=True)
    texts = texts / texts.norm(dim=1, keepdim=True)
    sim = (texts.double() @ images.double().T).tolist()  # [T][I]
    t2i = [sorted(range(len(row)), key=lambda i: -row[i]).index(owner[t]) for t, row in enumerate(sim)]
    i2t = []
    for i in range(images.shape[0]):
        order = sorted(range(len(sim)), key=lambda t: -sim[t][i])
        i2t.append(next(pos for pos, t in enumerate(order) if owner[t] == i))
    return t2i, i2t


def test_ranks_equal_a_brute_force_sort():
    gen = torch.Generator().manual_seed(0)
    owner = [i for i in range(7) for _ in range(5)] + [3]  # 5 captions each, one image has 6
    images = torch.randn(7, 6, generator=gen)
    texts = images[owner] + 1.2 * torch.randn(len(owner), 6, generator=gen)  # noisy: ranks vary
    t2i, i2t = retrieval_ranks(images, texts, torch.tensor(owner), chunk=4)  # chunks split the rows
    want_t2i, want_i2t = _brute_force(images, texts, owner)
    assert t2i.tolist() == want_t2i and i2t.tolist() == want_i2t
    assert max(want_t2i) > 0  # not a trivially perfect retrieval
    scores = retrieval_scores(images, texts, torch.tensor(owner))
    assert scores["t2i_top1"] == pytest.approx(np.mean([r < 1 for r in want_t2i]))
    assert scores["t2i_top5"] == pytest.approx(np.mean([r < 5 for r in want_t2i]))
    assert scores["i2t_top1"] == pytest.approx(np.mean([r < 1 for r in want_i2t]))
    assert scores["i2t_top5"] == pytest.approx(np.mean([r < 5 for r in want_i2t]))
    with pytest.raises(DataError, match="at least one caption"):
        retrieval_ranks(images, texts[:5], torch.zeros(5, dtype=torch.long))
    with pytest.raises(DataError, match="one width"):
        retrieval_ranks(images, texts[:, :3], torch.tensor(owner))


def _karpathy(tmp_path, n_images: int = 4):
    """A tiny COCO-like folder (images under val2014/) and its Karpathy-format captions file."""
    rng = np.random.default_rng(0)
    (tmp_path / "coco" / "val2014").mkdir(parents=True)
    captions = [["a photo of a dog", "a dog on grass"], ["a red car", "a photo of a car", "red car on grass"],
                ["a cat", "a photo of a cat"], ["a cat on a car", "grass"]]
    entries = []
    for i in range(n_images):
        name = f"COCO_val2014_{i:012d}.jpg"
        Image.fromarray(rng.integers(0, 256, (20 + i, 18, 3), dtype=np.uint8)).save(tmp_path / "coco" / "val2014" / name)
        entries.append({"filepath": "val2014", "filename": name, "split": "test",
                        "sentences": [{"raw": c, "tokens": c.split()} for c in captions[i]]})
    entries.insert(1, {"filepath": "train2014", "filename": "missing.jpg", "split": "train",
                       "sentences": [{"raw": "never read"}]})
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps({"images": entries, "dataset": "coco"}))
    return path, tmp_path / "coco", captions


def test_karpathy_reader(tmp_path):
    from fae.data.karpathy import read_karpathy

    path, images, captions = _karpathy(tmp_path)
    split = read_karpathy(path, images)
    assert [f.name for f in split.files] == [f"COCO_val2014_{i:012d}.jpg" for i in range(4)]
    assert split.captions == [c for group in captions for c in group]
    assert split.caption_image == [i for i, group in enumerate(captions) for _ in group]
    assert len(read_karpathy(path, images, limit=2).files) == 2
    with pytest.raises(DataError, match="missing.jpg"):
        read_karpathy(path, images, split="train")
    with pytest.raises(DataError, match="no images in split 'val'"):
        read_karpathy(path, images, split="val")


@pytest.fixture(scope="module")
def siglip(tmp_path_factory):
    """A tiny random full SigLIP (vision tower with its MAP head + text tower) and tokenizer."""
    from test_text_encoders import WORDS, save_tokenizer  # a word-level tokenizer (unknown words: <unk>)

    folder = tmp_path_factory.mktemp("hf") / "sig"
    full = save_tiny_siglip(folder, vocab_size=len(WORDS), text_positions=8)
    save_tokenizer(folder)
    return full, folder


def test_attention_pool_is_the_towers_pooled_output(siglip):
    from fae.backbones import load_backbone

    full, folder = siglip
    backbone = load_backbone("siglip", weights=str(folder))
    images = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8)
    with torch.no_grad():
        pooled = full.vision_model(pixel_values=backbone.preprocess(images)).pooler_output  # [3, 32]
    assert backbone.has_attention_pool
    torch.testing.assert_close(backbone.attention_pool(backbone(images)), pooled, rtol=1e-5, atol=1e-5)


def test_eval_retrieval_cli_matches_brute_force(tmp_path, capsys, siglip):
    from fae.backbones import load_backbone
    from fae.data.imagefolder import ImageFiles

    full, folder = siglip
    path, images, captions = _karpathy(tmp_path)
    backbone = load_backbone("siglip", weights=str(folder))
    info = backbone.info
    fae = fae_on(info, seed=1).eval()
    fae.save_pretrained(tmp_path / "fae")
    assert main(["eval", "retrieval", "--fae", str(tmp_path / "fae"), "--images", str(images),
                 "--captions", str(path), "--out", str(tmp_path / "r.json"), f"backbone_weights={folder}",
                 f"text_weights={folder}", "text_max_length=8", "batch_size=3", "progress=false",
                 # the preprocessing before issue 30 (SigLIP2's defaults: tests/test_retrieval_protocol.py)
                 "image_preprocess=center_crop", "text_lowercase=false", "text_tokens=tokenizer"]) == 0
    result = json.loads(capsys.readouterr().out.splitlines()[0])
    assert (result["images"], result["captions"]) == (4, 9)

    # brute force: the HF towers directly, the same image reader (center crop to 16 px)
    from transformers import AutoTokenizer

    files = sorted((images / "val2014").iterdir())
    pixels = backbone.preprocess(torch.stack([ImageFiles(files, image_size=16)[i][0] for i in range(4)]))
    flat = [c for group in captions for c in group]
    owner = [i for i, group in enumerate(captions) for _ in group]
    ids = AutoTokenizer.from_pretrained(folder)(flat, padding="max_length", max_length=8, truncation=True,
                                                return_tensors="pt")["input_ids"]
    with torch.no_grad():
        vision = full.vision_model(pixel_values=pixels)
        recon = fae.decode_features(fae.encode(vision.last_hidden_state))
        embeddings = {"raw": vision.pooler_output, "reconstructed": full.vision_model.head(recon)}
        texts = full.text_model(input_ids=ids).pooler_output
    for kind, image_emb in embeddings.items():
        t2i, i2t = _brute_force(image_emb, texts, owner)
        for k in (1, 5):
            assert result[f"t2i_top{k}_{kind}"] == pytest.approx(np.mean([r < k for r in t2i]))
            assert result[f"i2t_top{k}_{kind}"] == pytest.approx(np.mean([r < k for r in i2t]))
    assert main(["eval", "retrieval", "--images", str(images), "--captions", str(path)]) == 2  # no FAE
