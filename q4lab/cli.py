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


SHOWN = [
    "task",
    "seed",
    "quantizer",
    "bits",
    "group_size",
    "act_bits",
    "act_mode",
    "fp_accuracy",
    "accuracy",
    "delta_accuracy",
    "bits_per_weight",
    "compression",
    "fake_rel_diff",
    "fake_rel_diff_max",
    "fake_agreement",
]


def _cmd_quantize(args: argparse.Namespace) -> int:
    import itertools

    import pandas as pd

    from q4lab.core import QuantSpec
    from q4lab.evaluate import evaluate
    from q4lab.recipe import ActSpec, Recipe

    rows = []
    grid = itertools.product(
        args.task, args.seed, args.quantizer, args.bits, args.group, args.act_bits
    )
    for task, seed, quantizer, bits, group, act_bits in grid:
        weight = QuantSpec(
            bits=bits,
            symmetric=not args.asym,
            group_size=group or None,
            scale_dtype=args.scale_dtype,
        )
        act = None
        if act_bits < 16:
            gran = "per_row" if args.act_mode == "dynamic" else "per_tensor"
            act = ActSpec(bits=act_bits, mode=args.act_mode, granularity=gran)
        recipe = Recipe.single(quantizer=quantizer, weight=weight, act=act)
        rows.append(evaluate(task, recipe, seed))
    table = pd.DataFrame(rows)
    print(table[SHOWN].to_markdown(index=False, floatfmt=".4g"))
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

    quant = sub.add_parser(
        "quantize",
        help="quantize a task's float baseline and print accuracy, size and checks",
        description="Every combination of the listed values is evaluated (one row each).",
    )
    quant.add_argument("--task", nargs="+", default=["digits-mlp"], help="task name(s)")
    quant.add_argument("--quantizer", nargs="+", default=["minmax"], help="quantizer name(s)")
    quant.add_argument("--bits", nargs="+", type=int, default=[4], help="weight bits")
    quant.add_argument(
        "--group", nargs="+", type=int, default=[0], help="group size(s); 0 = per-channel"
    )
    quant.add_argument(
        "--act-bits", nargs="+", type=int, default=[16], help="activation bits; 16 = float"
    )
    quant.add_argument("--act-mode", choices=["dynamic", "static"], default="dynamic")
    quant.add_argument("--asym", action="store_true", help="asymmetric weights (zero points)")
    quant.add_argument(
        "--scale-dtype", default="float16", choices=["float32", "bfloat16", "float16"]
    )
    quant.add_argument("--seed", nargs="+", type=int, default=[0])
    quant.set_defaults(func=_cmd_quantize)
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
