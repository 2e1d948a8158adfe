"""Text-image retrieval with a SigLIP / SigLIP2 FAE (the paper's Table 4: COCO 5K, top-1 T->I and I->T).

Protocol:
* image embedding = the SigLIP vision tower's own attention-pooling (MAP) head applied to the
  pre-head tokens (``HFBackbone.attention_pool``): the backbone's raw tokens for "raw", the FAE's
  reconstruction ``decode_features(encode(tokens))`` (posterior mean) for "reconstructed";
* text embedding = the SigLIP text tower's pooled output (``fae.text``: its head on the last
  position of the max-length padded caption, as SigLIP was trained);
* similarity = cosine: the L2-normalised image embedding dot the L2-normalised text embedding
  (SigLIP's logit scale and bias are monotone and leave every ranking unchanged);
* text -> image: a caption is correct at k when its own image is among the k most similar images;
* image -> text: an image is correct at k when *any* of its captions (5 per COCO image) is among
  the k most similar captions;
* ranks count the candidates scored strictly higher than the correct one (ties count in its
  favour). Recall@k = share of queries with rank < k.

Inputs, "following SigLIP2's original setting" (the paper's words for Table 4). What SigLIP2 does
(found in these sources; the facts carry over, no code does):

* text, big_vision: the SigLIP2 demo colab (``big_vision/configs/proj/image_text/SigLIP2_demo.ipynb``,
  cell "Tokenize and embed texts", note "the siglip models work best with lowercase texts")
  preprocesses captions with ``lower(key="text")|tok(length=64, model="gemma", bos="no",
  eos="sticky")``. ``tok`` (``big_vision/pp/proj/paligemma/ops.py``, ``get_tokenize`` and
  ``get_tolen``) encodes with the Gemma sentencepiece model without BOS and with one EOS appended;
  a caption of L or more ids is cut to its first L - 1 and the EOS kept last ("sticky"); shorter
  ones are padded on the right with the tokenizer's pad id (Gemma: pad 0, EOS 1, BOS 2). ``lower``
  (``big_vision/pp/ops_text.py``, ``get_lower``) is ``tf.strings.lower``; we use ``str.lower()``,
  the same on ASCII captions such as COCO's. ``README_siglip2.md``: the fixed-resolution
  checkpoints are SigLIP's two-tower model with a 256k vocabulary and the Gemma tokenizer.
* text, transformers (the installed 5.x): ``Siglip2Tokenizer`` (``models/siglip2/tokenization_siglip2.py``:
  Gemma BPE plus a ``Lowercase`` normaliser) and ``Siglip2Processor`` (``processing_siglip2.py``:
  ``padding="max_length"``, ``truncation``, ``max_length=64``) are chosen by ``AutoTokenizer`` only
  for ``model_type: siglip2`` - the NaFlex checkpoints (``models/auto/tokenization_auto.py``,
  ``MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS``). The fixed-resolution checkpoints (the ones this
  project registers, ``model_type: siglip``) load the class their tokenizer_config names,
  ``GemmaTokenizer`` (``models/gemma/tokenization_gemma.py``: no lowercasing, ``add_bos_token``
  defaults to True, ``add_eos_token`` to False, ``padding_side = "left"``). So the tokenizer's own
  call gives these towers neither lowercased text nor big_vision's id layout (no BOS, an EOS after
  the caption, right padding), which the pooled output - the text head on the last position of an
  unmasked sequence - saw in training.
* images: big_vision evaluates with ``resize(RES)|value_range(-1, 1)`` (the same colab; also the
  COCO retrieval config ``common_retrieval.py``): the whole image resized to RES x RES, no crop.
  transformers' ``SiglipImageProcessor`` likewise resizes to a fixed height and width (no centre
  crop), rescales by 1/255 and normalises with mean = std = 0.5 (= value range [-1, 1]); its
  filter is the checkpoint's ``resample`` (bilinear for the NaFlex ``Siglip2ImageProcessor``,
  bilinear in big_vision's ``resize``): we resize with PIL's bilinear filter.

* SigLIP (1) checkpoints get the same inputs from these rules: big_vision's ``tokenize`` op
  (``ops_text.py``, ``get_pp_tokenize``) lowercases by default and SigLIP's configs use
  ``eos="sticky", pad_value=1``; transformers' ``SiglipTokenizer`` lowercases itself
  (``do_lower_case``) and its pad token is its EOS ``</s>`` (id 1), the pad id our layout uses.

So by default (``fae eval retrieval``, :class:`fae.evaluation.config.RetrievalConfig`): captions
are lowercased and laid out as big_vision does, 64 ids (``fae.text.CaptionRules``, applied whatever
tokenizer class the checkpoint names), and each image is squashed whole to the tower's resolution
(``fae.data.karpathy.squashed_images``), then rescaled and normalised by the backbone. The earlier
behaviour - the tokenizer's own call, mixed case, and the ADM centre crop - stays selectable.
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F

from fae.errors import ConfigError, DataError
from fae.progress import show_progress

TOP_K = (1, 5)


def _normalised(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.detach().to("cpu", torch.float64), dim=-1)


def retrieval_ranks(image_emb: torch.Tensor, text_emb: torch.Tensor, caption_image: torch.Tensor,
                    chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """(text->image ranks [T], image->text ranks [I]) under the module's protocol.

    Args:
        image_emb: [I, P] image embeddings.
        text_emb: [T, P] caption embeddings.
        caption_image: [T] index of each caption's image.
        chunk: rows of the similarity matrix held at once (memory bound: chunk x max(I, T)).
    """
    caption_image = torch.as_tensor(caption_image, dtype=torch.long)
    if image_emb.ndim != 2 or text_emb.ndim != 2 or image_emb.shape[1] != text_emb.shape[1]:
        raise DataError(f"retrieval needs image [I, P] and text [T, P] embeddings of one width, got "
                        f"{list(image_emb.shape)} and {list(text_emb.shape)}")
    if caption_image.shape != (text_emb.shape[0],) or caption_image.numel() == 0:
        raise DataError(f"retrieval needs one image index per caption: {caption_image.numel()} for "
                        f"{text_emb.shape[0]} captions")
    n_images = image_emb.shape[0]
    if int(caption_image.min()) < 0 or int(caption_image.max()) >= n_images:
        raise DataError(f"caption image indices must lie in [0, {n_images})")
    if torch.bincount(caption_image, minlength=n_images).min() == 0:
        raise DataError("every image needs at least one caption for image -> text retrieval")
    images, texts = _normalised(image_emb), _normalised(text_emb)
    t2i = torch.empty(texts.shape[0], dtype=torch.long)
    for start in range(0, texts.shape[0], chunk):
        sim = texts[start:start + chunk] @ images.T  # [t, I]
        own = sim.gather(1, caption_image[start:start + chunk, None])  # [t, 1]
        t2i[start:start + chunk] = (sim > own).sum(dim=1)
    i2t = torch.empty(n_images, dtype=torch.long)
    for start in range(0, n_images, chunk):
        sim = images[start:start + chunk] @ texts.T  # [i, T]
        ids = torch.arange(start, start + sim.shape[0])
        mine = caption_image[None, :] == ids[:, None]  # [i, T]: the image's own captions
        best = sim.masked_fill(~mine, float("-inf")).max(dim=1, keepdim=True).values  # [i, 1]
        i2t[start:start + sim.shape[0]] = (sim > best).sum(dim=1)
    return t2i, i2t


def recall_at(ranks: torch.Tensor, ks: Iterable[int] = TOP_K) -> dict[int, float]:
    """{k: share of queries whose rank < k}."""
    return {k: float((ranks < k).double().mean()) for k in ks}


def retrieval_scores(image_emb: torch.Tensor, text_emb: torch.Tensor, caption_image: torch.Tensor,
                     ks: Iterable[int] = TOP_K) -> dict[str, float]:
    """``{"t2i_top1", "t2i_top5", "i2t_top1", "i2t_top5"}`` (shares in [0, 1]) for these embeddings."""
    t2i, i2t = retrieval_ranks(image_emb, text_emb, caption_image)
    ks = tuple(ks)
    scores = {f"t2i_top{k}": v for k, v in recall_at(t2i, ks).items()}
    scores.update({f"i2t_top{k}": v for k, v in recall_at(i2t, ks).items()})
    return scores


class RetrievalImageEmbeddings:
    """uint8 images [B, C, H, W] -> [B, 2P]: the MAP-head embedding of the raw tokens, then of the
    FAE's reconstruction (the two kinds side by side, raw first).

    Args:
        fae: an ``fae.autoencoder.FAE`` over a SigLIP / SigLIP2 backbone whose tower has its head.
    """

    kinds = ("raw", "reconstructed")

    def __init__(self, fae):
        self.fae = fae
        backbone = fae.backbone
        if not getattr(backbone, "has_attention_pool", False):
            raise ConfigError(f"retrieval needs a SigLIP / SigLIP2 backbone with its attention-pooling "
                              f"head; the FAE's backbone '{fae.config.backbone}' has none")
        self.backbone = backbone
        self.name = fae.config.backbone

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.fae.tokens_from(images)  # [B, N, D]
        recon = self.fae.decode_features(self.fae.encode(tokens))  # [B, N, D]
        pool = self.backbone.attention_pool
        return torch.cat([pool(tokens), pool(recon)], dim=1).float().cpu()  # [B, 2P]


@torch.no_grad()
def text_embeddings(encoder, captions: list[str], batch_size: int = 256, progress: bool = True) -> torch.Tensor:
    """Pooled text-tower embeddings [T, P] of ``captions`` (float32, CPU), in order."""
    parts = []
    for start in show_progress(range(0, len(captions), batch_size), desc="captions", unit="batch",
                               disable=not progress):
        parts.append(encoder.encode(captions[start:start + batch_size]).pooled.float().cpu())
    return torch.cat(parts) if parts else torch.empty(0, encoder.pooled_dim)
