"""Print pins of the oldest versions pyproject.toml allows, one ``name==version`` a line, for CI's lowest run.

    python .ci/lowest.py [EXTRA NAME...]

Pins every requirement in [project] dependencies, and from the optional-dependency group EXTRA only the
packages NAME... (the test libraries the lowest run's tests import). Each pin is the requirement's own
``>=`` lower bound, read from pyproject.toml so that it never drifts from what the package declares; a
requirement without one, or a NAME that EXTRA does not list, is an error. A lower bound that does not
exist on PyPI as a wheel for this Python, or that does not install with the other lower bounds, then fails
the install: raise it in pyproject.toml to the oldest version that truly works.
"""
from __future__ import annotations

import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def lower_bound(req: Requirement) -> str:
    bounds = [spec.version for spec in req.specifier if spec.operator == ">="]
    if len(bounds) != 1:
        sys.exit(f"lowest.py: {req} needs exactly one '>=' lower bound in pyproject.toml")
    return bounds[0]


def pin(req: Requirement) -> str:
    extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
    marker = f" ; {req.marker}" if req.marker else ""
    return f"{req.name}{extras}=={lower_bound(req)}{marker}"


def main(argv: list[str]) -> None:
    project = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project.get("dependencies", [])]
    if argv:
        extra, *names = argv
        listed = {canonicalize_name(r.name): r
                  for r in map(Requirement, project.get("optional-dependencies", {}).get(extra, []))}
        for name in names:
            if canonicalize_name(name) not in listed:
                sys.exit(f"lowest.py: {name} is not in pyproject.toml's optional dependencies [{extra}]")
            reqs.append(listed[canonicalize_name(name)])
    print("\n".join(pin(r) for r in reqs))


if __name__ == "__main__":
    main(sys.argv[1:])
