"""Evaluates a run's latest checkpoint: `python eval.py --config configs/default.py --workdir runs/default`.

Writes `<workdir>/eval.json` and appends the results to the run's metrics.
"""

from advjax import cli


def main(config, workdir):
  from advjax.evaluation import evaluate  # Imported after flag parsing so bad flags fail fast.
  evaluate.evaluate_run(config, workdir)


if __name__ == "__main__":
  cli.run(main)
