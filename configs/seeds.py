"""One experiment over several of its variants and seeds: the mean and spread of every result.

arg: '<config>' or '<config>:<arg1>,<arg2>,...', a file of configs/ and the
arguments of its get_config, one run (a table row) each, e.g.

  python sweep.py --config configs/seeds.py:denoise_digits:baseline,null,median --workdir runs/denoise
  python sweep.py --config configs/seeds.py:sat_digits:relu,silu --config.seeds="(0,1,2,3)" --workdir runs/sat

Three seeds by default; every result each run's evaluations report is tabled
(accuracies in percent). A field of one run is `--config.runs.<arg>.<field>`.
"""

from advjax import sweep


def get_config(arg=None):
  if not arg:
    raise ValueError("configs/seeds.py needs an argument: '<config>[:<arg1>,<arg2>,...]'")
  module, _, args = arg.partition(":")
  return sweep.sweep_config(sweep.variants(module, args.split(",") if args else [""]), seeds=(0, 1, 2))
