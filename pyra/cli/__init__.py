"""Command line: `python -m pyra <command> ...` (`pyra.cli.main`)."""
