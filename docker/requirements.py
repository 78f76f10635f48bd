"""Print the pinned requirements of pyproject.toml's dependencies plus some extras, one per line.

The GPU image needs the [serve] pins with `onnxruntime` swapped for `onnxruntime-gpu` of the same
version (the two must never share an environment), so pyproject.toml stays the one place with pins:

    python docker/requirements.py serve --gpu > requirements.txt
"""

from __future__ import annotations

import argparse
import re
import tomllib
from pathlib import Path


def requirements(pyproject: Path, extras: list[str], gpu: bool = False) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in extras:
        reqs += project["optional-dependencies"][extra]
    if gpu:  # same version, GPU build: "onnxruntime==1.31.1" -> "onnxruntime-gpu==1.31.1"
        reqs = [re.sub(r"^onnxruntime(?=[=<>~!\[ ]|$)", "onnxruntime-gpu", r) for r in reqs]
    return reqs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("extras", nargs="*", help="optional-dependency groups, e.g. serve")
    parser.add_argument("--gpu", action="store_true", help="onnxruntime -> onnxruntime-gpu (same version)")
    parser.add_argument("--pyproject", type=Path, default=Path("pyproject.toml"))
    args = parser.parse_args()
    print("\n".join(requirements(args.pyproject, args.extras, args.gpu)))


if __name__ == "__main__":
    main()
