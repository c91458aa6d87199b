"""Evaluates a run's latest checkpoint: `python eval.py --config configs/default.py --workdir runs/default`.

Writes `<workdir>/eval.json` and appends the results to the run's metrics.
"""

from advjax import preemption

preemption.install()  # From here on SIGTERM asks for a clean stop, even during the imports below.

from advjax import cli  # noqa: E402


def main(config, workdir):
  from advjax import runs  # Imported after flag parsing so bad flags fail fast.
  runs.evaluate_run(config, workdir)


if __name__ == "__main__":
  cli.run(main)
