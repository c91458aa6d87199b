"""Empirical risk minimisation: the mean (label-smoothed) cross-entropy on clean data."""

import jax.numpy as jnp

from advjax.training.objectives import base


class ERM(base.LossObjective):
  """`erm`: min_theta E L(theta, x, y), the task's cross-entropy (per pixel for label maps)."""

  supports_aux_loss = True

  def loss(self, params, model_state, batch, rng):
    loss, logits, model_state = self.supervised_loss(params, model_state, batch["image"], batch["label"], rng)
    metrics = {"accuracy": jnp.mean(self.task.correct(logits, batch["label"]))}
    return loss, (model_state, metrics)
