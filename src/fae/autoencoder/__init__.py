"""Stage Ia (encoder + feature decoder, the ``FAE`` model) and stages Ib/II (pixel decoder)."""
from fae.autoencoder.encoder import EncoderConfig, build_encoder
from fae.autoencoder.feature_decoder import FeatureDecoder, FeatureDecoderConfig
from fae.autoencoder.model import FAE, FAEConfig
from fae.autoencoder.normalization import FeatureNormalizer
from fae.autoencoder.vae import DiagonalGaussian

__all__ = ["FAE", "FAEConfig", "EncoderConfig", "FeatureDecoderConfig", "FeatureDecoder", "build_encoder",
           "FeatureNormalizer", "DiagonalGaussian"]
