"""IG on the exported bundle (ONNX Runtime) against torch on the ten 224-px zoo layouts, run outside the CLI.

``xaisdk bench --suites bundle`` runs the same suite, but the ``xaisdk`` command sets
``OMP_WAIT_POLICY=PASSIVE`` before torch loads (robust under CPU contention), which makes torch's
OpenMP threads sleep between operators and slows the torch side by up to 2x at 224 px. This script
leaves OpenMP at its default, as a service embedding ``xaisdk.Explainer`` gets it.

    python benchmarks/bundle_speed.py [--models resnet18 ...] [--contention] [--one-session] [--name bundle_cpu_<date>]

Writes ``benchmarks/results/<name>.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from xaisdk.bench.bundle_speed import DEFAULT_MODELS, bundle_speed_suite
from xaisdk.bench.environment import describe_environment
from xaisdk.bench.report import markdown, write_results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(DEFAULT_MODELS), choices=list(DEFAULT_MODELS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--contention", action="store_true", help="race while another process keeps one core busy")
    parser.add_argument("--one-session", action="store_true",
                        help="also race the bundle with row_parallel=False (a third copy of each model in memory)")
    parser.add_argument("--name", default=None)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    command = "python benchmarks/bundle_speed.py " + " ".join(sys.argv[1:] if argv is None else argv)
    result = {**describe_environment(command.strip()), "quick": False,
              "suites": {"bundle": bundle_speed_suite(tuple(args.models), repeats=args.repeats, progress=True,
                                                   contention=args.contention, one_session=args.one_session)}}
    name = args.name or f"bundle_cpu_{result['date'][:10]}"
    print(markdown(result))
    for path in write_results(result, args.out, name):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
