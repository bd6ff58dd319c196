"""What moving the configuration loader to pydantic-settings would cost every `authz-server` command.

The decision (README, "Configuration reference") rests on this: `authz-server config show` timed as it is, and
with `pydantic_settings` imported first, interleaved so a busy machine slows both alike. pydantic-settings is not
a dependency; install it into a scratch environment and pass that environment's site-packages:

    python3 -m venv /tmp/pyd && /tmp/pyd/bin/pip install -q pydantic-settings
    .venv/bin/python -m benchmarks.config_loader_cost /tmp/pyd/lib/python3.11/site-packages
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

ROUNDS = 15


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        sys.stderr.write(__doc__ or "")
        return 2
    site_packages = argv[0]
    show = "import authz_server.cli; authz_server.cli.main(['config', 'show'])"
    variants = {
        "hand-written": [sys.executable, "-c", show],
        "+ pydantic_settings": [
            sys.executable, "-c", f"import sys; sys.path.append({site_packages!r}); import pydantic_settings; {show}",
        ],
    }  # fmt: skip
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(ROUNDS):
        for name, command in variants.items():
            started = time.perf_counter()
            subprocess.run(command, stdout=subprocess.DEVNULL, check=True)
            times[name].append(time.perf_counter() - started)
    base, pydantic = (statistics.median(t) for t in times.values())
    print(f"config show, median of {ROUNDS}: hand-written {base * 1e3:.0f} ms, with pydantic_settings imported "
          f"{pydantic * 1e3:.0f} ms, ratio {pydantic / base:.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
