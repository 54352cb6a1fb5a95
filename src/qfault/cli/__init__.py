"""Command-line interface (``qfault``): one module per subcommand, listed in ``main.SUBCOMMANDS``.

Heavy imports happen inside the subcommands' ``run``.
"""
