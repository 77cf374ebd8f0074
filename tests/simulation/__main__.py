"""``python -m tests.simulation``: run seeds of the fault simulator (``make sim``).

Each seed gets a fresh SQLite file (or a fresh database on the server
``GRAPH_RUNS_TEST_POSTGRES_URL`` names, with ``--backend postgres``); a failing seed is
printed with the command that replays it.
"""

import argparse
import logging
import sys
import time

from tests.simulation.databases import fresh_database
from tests.simulation.simulator import Simulation

# A command-line tool: it reports on standard output.
echo = print


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.simulation")
    parser.add_argument("--seeds", type=int, default=20, help="how many seeds, from --first")
    parser.add_argument("--first", type=int, default=0, help="the first seed")
    parser.add_argument("--seed", type=int, help="run this one seed only")
    parser.add_argument("--hours", type=float, default=24.0, help="simulated hours per seed")
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    args = parser.parse_args(argv)
    # The code logs every retry and every lost lease: thousands a simulated day.
    logging.getLogger("graph_runs").setLevel(logging.CRITICAL)
    seeds = [args.seed] if args.seed is not None else range(args.first, args.first + args.seeds)
    failed = 0
    for seed in seeds:
        started = time.monotonic()
        with fresh_database(args.backend) as url:
            simulation = Simulation(seed, url, hours=args.hours)
            violations = simulation.run()
        took = time.monotonic() - started
        faults = ", ".join(f"{n} {k}" for k, n in sorted(simulation.counts.items()))
        verdict = "FAILED" if violations else "ok"
        echo(f"seed {seed}: {verdict} ({args.hours} h simulated in {took:.1f} s; {faults})")
        for line in violations[:20]:
            echo(f"  {line}")
        if violations:
            failed += 1
            echo(
                f"  replay: python -m tests.simulation --seed {seed} --hours {args.hours} "
                f"--backend {args.backend}"
            )
    echo(f"{len(seeds) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
