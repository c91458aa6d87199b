"""Runs a shared-adversarial-training sweep: `python sweep.py --config configs/compare_digits.py --workdir runs/compare`.

Trains the ERM model, fine-tunes it for every (sharedness, eps, sigma) of the
grid, evaluates clean accuracy, eps_adv(delta) and eps_uni(delta) for each,
and writes results.csv, results.md, pareto.png and perturbations.png to the
workdir. Rerunning with the same workdir resumes.
"""

from advjax import cli


def main(config, workdir):
  from advjax import sweep  # Imported after flag parsing so bad flags fail fast.
  sweep.run_sweep(config, workdir)


if __name__ == "__main__":
  cli.run(main)
