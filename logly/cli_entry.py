"""The `logly` console script (pyproject.toml `[project.scripts]`).

`logly ip ADDR` and `logly ips` are what an admin types while something is going on, and a new
process must answer in 50 ms on 10M events: they run through logly/cli_ip.py's `run`, which
loads neither typer, rich nor SQLAlchemy (nearly a second of imports together). Everything
else, --help included, goes to the typer app in logly/cli.py. Keep this module's imports to
the standard library.
"""

import sys


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    from logly.cli_ip import run

    code = run(args)
    if code is None:
        from logly.cli import typer_main

        code = typer_main(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
