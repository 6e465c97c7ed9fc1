"""`python -m axonweb ...` is `axon app ...` (same arguments, same messages and exit codes), for an
environment whose `axon` command comes from elsewhere (a Slicer-shipped engine has no web app)."""

from __future__ import annotations

import argparse
import sys

from axonct.errors import AxonInputError

from .command import DESCRIPTION, app_arguments, run_app


class _OneLineParser(argparse.ArgumentParser):
    """Refusals in one line and exit 2, as every `axon` command (no usage block)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def main(argv: list[str] | None = None) -> int:
    parser = _OneLineParser(prog="axon app", description=DESCRIPTION)
    app_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_app(args)
    except AxonInputError as exc:
        print(f"axon app: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("axon app: stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
