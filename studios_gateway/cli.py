"""The `studios-gateway` command: check-config (and, as they land, sessions and demo)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from studios_gateway.config import ConfigError, load_config


def check_config(args: argparse.Namespace) -> int:
    try:
        config = load_config(env_file=args.env_file)
    except ConfigError as e:
        print(f"studios-gateway: {e}", file=sys.stderr)
        return 2
    rows = config.describe()
    width = max(len(name) for name, _, _ in rows)
    vwidth = min(48, max(len(value) for _, value, _ in rows))
    if not args.quiet:
        for name, value, source in rows:
            print(f"{name:<{width}}  {value:<{vwidth}}  {source}")
        print()
    for warning in config.warnings:
        print(f"warning: {warning}")
    print("configuration OK")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="studios-gateway",
        description="Studios gateway tools. The gateway itself runs as `twistd studios-gateway`.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("check-config", help="print the effective configuration and check it")
    p.add_argument("--env-file", help="also read variables from this file (NAME=value lines)")
    p.add_argument("-q", "--quiet", action="store_true", help="print only warnings and errors")
    p.set_defaults(func=check_config)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
