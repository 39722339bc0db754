"""python -m sglang_ext.quantize SRC OUT --to FORMAT [--fuse-shared-expert] [--scales max|mse] [--input-amax A]
[--max-shard-size 5GB] [--threads 1]: quantize a local BF16 Qwen3.5/3.6-MoE checkpoint, streaming and resumable (rerun the
same command after a crash)."""

import argparse
import re
import sys
from pathlib import Path

import torch

from sglang_ext.formats.encoders import FORMATS, Options
from sglang_ext.quantize import DEFAULT_MAX_SHARD_BYTES, SCALE_RULES, QuantizeError, quantize

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def _size(text: str) -> int:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B|B)?\s*", text, re.IGNORECASE)
    if match is None or float(match[1]) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give a size such as 5GB, 500MB or 2GiB")
    return int(float(match[1]) * _UNITS[(match[2] or "").upper()])


def _amax(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: give the activation amax as a positive number, e.g. 8")
    return value


def _directory(text: str) -> Path:
    if not text.strip():  # Path("") is the working directory
        raise argparse.ArgumentTypeError(f"{text!r} is an empty path; give a checkpoint directory")
    return Path(text)


def _threads(text: str) -> int:
    try:
        threads = int(text)
    except ValueError:
        threads = 0
    if not 1 <= threads <= 1024:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number of torch threads from 1 to 1024, e.g. 1")
    return threads


def _gb(nbytes: int) -> str:
    return f"{nbytes / 1e9:.2f} GB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sglang_ext.quantize", description=__doc__.split(": ", 1)[1])
    parser.add_argument("src", type=_directory, help="BF16 checkpoint directory (config.json + *.safetensors)")
    parser.add_argument("out", type=_directory, help="output directory: new, empty, or an unfinished run of the same job")
    parser.add_argument("--to", dest="fmt", choices=FORMATS, required=True)
    parser.add_argument("--fuse-shared-expert", action="store_true",
                        help="quantize the shared expert too (modelopt-nvfp4, ct-mxfp4), so SGLang can fuse it into "
                             "the routed MoE; quark-mxfp4-fse and quark-w8a8-int8 always do")  # fmt: skip
    parser.add_argument("--scales", choices=SCALE_RULES, default="max",
                        help="MXFP4 block exponents: max (the tools' default) or mse (the best of the max-derived "
                             "exponent and its two neighbours by squared error)")  # fmt: skip
    parser.add_argument("--input-amax", type=_amax, metavar="A",
                        help="modelopt-nvfp4 only: the activation amax its static input_scale is computed from "
                             "(this tool does not calibrate)")  # fmt: skip
    parser.add_argument("--max-shard-size", type=_size, default=DEFAULT_MAX_SHARD_BYTES, metavar="SIZE",
                        help="largest output shard (default 5GB)")
    parser.add_argument("--threads", type=_threads, default=1,
                        help="torch threads (default 1: a Linear or one expert is too small for more to pay; measured "
                             "slower with 2 on a 2-core machine)")  # fmt: skip
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    options = Options(scales=SCALE_RULES[args.scales], fuse_shared_expert=args.fuse_shared_expert, input_amax=args.input_amax)
    try:
        record = quantize(args.src, args.out, args.fmt, options, max_shard_bytes=args.max_shard_size,
                          show_progress=not args.no_progress)  # fmt: skip
    except QuantizeError as error:
        print(f"error: {error}\nfix: {error.fix}", file=sys.stderr)
        return 1
    except OSError as error:  # a path that cannot be read or written, beyond the checks above
        print(f"error: {error.filename or args.out}: {error.strerror or error}\n"
              f"fix: give a SRC you can read and an OUT you can write", file=sys.stderr)  # fmt: skip
        return 1
    except KeyboardInterrupt:
        print(f"interrupted: rerun the same command to resume (finished shards in {args.out} are kept)", file=sys.stderr)
        return 130
    rate = record.source_bytes / 1e6 / max(record.seconds, 1e-9)
    print(f"{args.out}: {args.fmt}, {len(record.shards)} shards, {_gb(record.output_bytes)} from {_gb(record.source_bytes)} BF16; "
          f"{record.quantized_modules} Linears quantized, {record.excluded_modules} kept BF16")
    print(f"{record.seconds:.1f} s ({rate:.0f} MB/s of BF16), peak RSS {record.peak_rss_bytes / 2**20:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
