"""Trains a model: `python train.py --config configs/default.py --workdir runs/default`.

Override any config field with `--config.<field>=<value>`. Rerunning with the
same workdir resumes from the latest checkpoint.
"""

from advjax import preemption

preemption.install()  # From here on SIGTERM asks for a clean stop, even during the imports below.

from advjax import cli  # noqa: E402


def main(config, workdir):
  from advjax import runs  # Imported after flag parsing so bad flags fail fast.
  runs.train_and_evaluate(config, workdir)


if __name__ == "__main__":
  cli.run(main)
