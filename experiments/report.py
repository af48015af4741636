"""A run's workdir as one HTML page (`start_jax.eval.run_report`).

python -m experiments.report --workdir=/tmp/run [--out=/tmp/run/report.html --samples=6]
"""

from __future__ import annotations

import argparse

from start_jax.eval.run_report import write_report


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--out", default="", help="'' = <workdir>/report.html")
    p.add_argument("--samples", type=int, default=6, help="sample rollouts shown (the last)")
    args = p.parse_args(argv)
    try:
        path = write_report(args.workdir, args.out or None, args.samples)
    except FileNotFoundError as e:
        p.error(str(e))
    print(path)
    return path


if __name__ == "__main__":
    main()
