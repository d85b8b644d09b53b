"""Node wiring and the command line, above the cores (director/, syncd/, ha/).

The one package allowed to import lab/ and bench/ (lazily, for their subcommands).
"""
