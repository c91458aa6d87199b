"""Trains one experiment over config args and seeds, and tables mean and spread.

  python seeds.py --config configs/denoise_digits.py --args baseline,null,median \
      --seeds 0,1,2 --workdir runs/denoise [--jobs 3] [--config.num_epochs=4 ...]

Each (arg, seed) is a train.py run in `<workdir>/<arg>/seed<seed>`; flags
after the known ones (`--config.<field>=<value>`) go to every run. Finished
runs are read back, so rerunning resumes. Writes `<workdir>/seeds.md`: the
mean and sample standard deviation over seeds of every evaluation result
(accuracies in percent).
"""

import argparse
import sys

from advjax import cli


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", required=True, help="the experiment's config file (configs/*.py)")
  p.add_argument("--args", default="", help="comma-separated config args (one row each); empty: the default")
  p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (config.seed)")
  p.add_argument("--workdir", required=True)
  p.add_argument("--jobs", type=int, default=1, help="runs at a time (advjax/seeds.py says when more help)")
  known, overrides = p.parse_known_args(argv)
  bad = [o for o in overrides if not o.startswith("--config.")]
  if bad:
    cli.fail(f"unknown flags {bad}: only --config.<field>=<value> overrides are passed to the runs")
  try:
    seeds = [int(s) for s in known.seeds.split(",") if s]
  except ValueError:
    cli.fail(f"--seeds must be comma-separated integers, got {known.seeds!r}")
  args = known.args.split(",")
  from advjax import seeds as seeds_lib  # Imported after flag parsing so bad flags fail fast.
  from advjax.errors import AdvjaxError
  try:
    failed = seeds_lib.run_all(known.config, args, seeds, known.workdir, jobs=known.jobs, overrides=overrides)
  except AdvjaxError as e:
    cli.fail(str(e))
  print(seeds_lib.write_table(known.workdir, args, seeds))
  if failed:
    cli.fail(f"{len(failed)} run(s) failed: {', '.join(failed)}")


if __name__ == "__main__":
  main(sys.argv[1:])
