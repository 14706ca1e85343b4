"""Command line: ``python -m swarm demo``."""

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m swarm")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="run a short demonstration batch")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from swarm import _demo
        return _demo.main()
    return 2


if __name__ == "__main__":
    sys.exit(main())
