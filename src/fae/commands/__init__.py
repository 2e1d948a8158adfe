"""The ``fae`` verbs: one module per verb, each a thin function over the library.

Each module exposes ``configure(parser)`` (its options; sets ``func``) and imports what it needs at
the top: ``fae.cli`` names every verb with its one-line help and imports only the module of the
verb being run, so ``fae --help`` stays fast. ``fae.cli`` owns the process group; a verb's
``run(args)`` never starts or stops it.
"""
