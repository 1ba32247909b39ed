"""Side-by-side throughput: alternate two benchmark commands (A, B, A, B, ...).

    python scripts/compare.py --rounds 3 \
        --a "python scripts/bench.py experiment=deep_ebm_mnist" \
        --b "python scripts/reference/deep_ebm_straightforward.py --bench"

Each command must print a JSON line with ``images_per_s``. Shared machines are noisy, so
the two run alternately and the result is the median of the per-round ratios A/B.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys


def images_per_s(command: str, key: str = "images_per_s") -> float:
    out = subprocess.run(shlex.split(command), capture_output=True, text=True, check=True).stdout
    line = next(l for l in reversed(out.strip().splitlines()) if l.startswith("{"))
    return float(json.loads(line)[key])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a", required=True, help="command A (ours)")
    parser.add_argument("--b", required=True, help="command B (reference)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--key", default="images_per_s",
                        help="the JSON number compared (e.g. cpu_images_per_s of bench.py --loop)")
    args = parser.parse_args()
    a, b = [], []
    for i in range(args.rounds):
        a.append(images_per_s(args.a, args.key))
        b.append(images_per_s(args.b, args.key))
        print(f"round {i + 1}: A {a[-1]:.1f}  B {b[-1]:.1f} images/s", file=sys.stderr)
    ratios = [x / y for x, y in zip(a, b)]
    print(json.dumps({"a_images_per_s": a, "b_images_per_s": b,
                      "a_median": statistics.median(a), "b_median": statistics.median(b),
                      "median_ratio": round(statistics.median(ratios), 3), "key": args.key,
                      "a": args.a,
                      "b": args.b}))


if __name__ == "__main__":
    main()
