"""The configs shipped with FAE, as package data: ``imagenet256/`` (the paper's recipes), ``demo/``
(``fae demo``) and ``experiments/`` (``fae experiment``).

Every ``--config`` argument takes a file path or one of these by its name relative to this folder
(``--config imagenet256/sit_xl1.yaml``); ``fae.config.config_file`` resolves it. No code lives here.
"""
