"""Runs a sweep: `python sweep.py --config configs/compare_digits.py --workdir runs/compare`.

A sweep config names runs (experiment configs, one row each) and seeds; every
(run, seed) is trained and evaluated in `<workdir>/<run>/seed<seed>`, and the
mean and spread over seeds of every result is written to `<workdir>/results.md`
(with results.csv and the figures the config asks for). Override any field
with `--config.<field>=<value>` (`--config.seeds="(0,1,2)"`). Rerunning with
the same workdir resumes: finished runs are read back, not redone.
See `advjax.sweep`.
"""

from advjax import preemption

preemption.install()  # From here on SIGTERM asks for a clean stop, even during the imports below.

from advjax import cli  # noqa: E402


def main(config, workdir):
  from advjax import sweep  # Imported after flag parsing so bad flags fail fast.
  sweep.run_sweep(config, workdir)


if __name__ == "__main__":
  cli.run(main)
