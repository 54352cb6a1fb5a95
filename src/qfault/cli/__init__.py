"""Command-line interface (``qfault``). Heavy imports happen inside the subcommands."""
