"""One training loop for every stage (see ``stage.py`` for what a stage supplies)."""
