"""``python -m convserve <command> ...``: the same as the ``convserve`` command."""

from convserve.cli import cli

if __name__ == "__main__":
    cli()
