"""The ``q4lab`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _cmd_demo(args: argparse.Namespace) -> int:
    from q4lab.demo import compare_quantizers, synthetic_weights

    table = compare_quantizers(synthetic_weights(args.k, args.n, args.seed))
    print(
        f"Reconstruction of synthetic {args.k}x{args.n} weights by every registered quantizer "
        "(rel_sq_error = ||W - W_hat||^2 / ||W||^2; bits from the size ledger)\n"
    )
    print(table.to_markdown(index=False, floatfmt=".4g"))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="q4lab", description="INT4 quantization research in JAX")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo", help="quantize synthetic matrices with every quantizer and print the errors"
    )
    demo.add_argument("--k", type=int, default=512, help="input size of each matrix")
    demo.add_argument("--n", type=int, default=512, help="output size of each matrix")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ValueError as err:  # configuration errors: one clear line, no traceback
        parser.exit(2, f"q4lab {args.command}: error: {err}\n")


if __name__ == "__main__":
    sys.exit(main())
