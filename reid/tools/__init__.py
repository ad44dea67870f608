"""The programs: train, test, export, search. Each module's ``cli()`` is both a console
script (``reid-train`` ...) and what ``tools/<name>.py`` runs."""
