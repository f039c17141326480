"""``python -m dlpipe.import_check MODULE...``: import each module; exit 1 naming the first that
does not import. Setup and the images use it to check an install.

Not ``python -c "import ..."``: pyspark's Spark Connect package, which Great Expectations
imports, takes a ``-c`` program for its own doctests and exits 0 when Connect's optional
requirements are missing (pandas < 2.2 here). Such a check passed whatever came after
great_expectations, a module that does not exist included."""

from __future__ import annotations

import importlib
import sys


def main(names: list[str]) -> int:
    if not names:
        print("usage: python -m dlpipe.import_check MODULE...", file=sys.stderr)
        return 2
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as exc:  # an ImportError, or whatever the module's own import raised
            print(f"import check: {name} does not import ({type(exc).__name__}: {exc})", file=sys.stderr)
            return 1
    print(f"import check: {', '.join(names)} import")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
