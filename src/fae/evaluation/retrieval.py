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
