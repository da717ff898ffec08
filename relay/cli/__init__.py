"""The relay command line: one module per command group; main is the console entry point."""

from relay.cli.command import build_parser, main

__all__ = ["build_parser", "main"]
