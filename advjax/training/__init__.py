"""Training: the train state, objectives, optimisers, the step's compilation and the loop.

  train_state  TrainState (params, model statistics, key, objective extras)
  objectives   the registry of training objectives and their protocol
  optim        optimisers and learning-rate schedules from config data
  steps        jit-compilation of an objective's step over a device mesh
  sat          the softplus-gradient diagnostic of smooth adversarial training
  trainer      the loop: I/O, checkpoints, logging, preemption
"""
