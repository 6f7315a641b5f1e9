"""``helion-remote``: command-line helpers, one command group per backend.

``helion-remote modal deploy|check|settings`` lives in
:mod:`helion_remote.backends.modal.cli`; this module is only the entry point
(the ``helion-remote`` console script) and dispatches to a group's module.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

GROUPS: dict[str, str] = {"modal": "helion_remote.backends.modal.cli"}
"""Group name -> module with ``HELP`` and ``add_commands(parser)`` (it imports no backend SDK)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="helion-remote", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="group", required=True)
    for name, module_name in GROUPS.items():
        module = importlib.import_module(module_name)
        module.add_commands(sub.add_parser(name, help=module.HELP))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.fn(args))


if __name__ == "__main__":
    sys.exit(main())
