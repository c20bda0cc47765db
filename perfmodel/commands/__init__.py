"""CLI command modules, discovered by :func:`perfmodel.cli.build_parser`.

Each module defines ``register(cli)`` using ``cli.command(name, help)`` or
``cli.subcommand(group, name, help)``, sets ``func=handler`` on the parser it
gets, and keeps heavy imports inside the handler.
"""
