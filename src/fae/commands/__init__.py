"""The ``fae`` verbs: one module per verb, each a thin function over the library.

Each module exposes ``register(subparsers)`` (adds its parser and sets ``func``) and keeps heavy
imports inside functions so ``fae --help`` stays fast. ``fae.cli`` lists them explicitly and owns
the process group; a verb's ``run(args)`` never starts or stops it.
"""
