"""``fae experiment NAME [--quick] [--out runs/experiments]``: the paper's comparisons in miniature.

Each experiment (``experiments/NAME.yaml``) trains several generators of the same size and
step budget on Fashion-MNIST, on latents that differ in one declared variable, scores each at fixed
generator steps (FID against real test images, with the real-vs-real floor at the same N; class
accuracy by the demo's pixel judge) and writes ``ROOT/NAME/results.json`` and a self-contained
``ROOT/NAME/report.html`` ending with the paper's ordering vs ours:

    latent-space     FAE latents vs raw backbone tokens vs patchified pixels vs a pixel VAE
    encoder          single attention (paper) vs linear vs transformer encoder
    latent-channels  c = 8 / 16 / 32 / 64
    time-shift       shift 0.4 (paper) vs off vs other values
    starflow         a STARFlow normalizing flow on FAE latents vs on a pixel VAE's (+ bits/dim)

The base of every arm is the demo's config (``demo/demo.yaml``, read at run time); an arm
is a list of ``key=value`` overrides of it (``fae.experiment.config``). Stages are shared between
arms and experiments through a content-keyed store (``ROOT/_stages``), so e.g. the time-shift arms
train one FAE; re-running skips finished arms, resumes interrupted ones and reruns only the arms a
config change touches. The judge and the test images' Inception features (FID reference, floor) are
the demo's: one evaluation cache keyed by content, $FAE_EVAL_CACHE, else runs/_eval under the
working directory (``fae.demo.shared_eval``).
"""
