"""Empirical risk minimisation: the mean (label-smoothed) cross-entropy on clean data."""

import jax.numpy as jnp

from advjax.training.objectives import base


class ERM(base.LossObjective):
  """`erm`: min_theta E L(theta, x, y), the task's cross-entropy (per pixel for label maps)."""

  def loss(self, params, model_state, batch, rng):
    logits, model_state = base.apply_train(self.model, params, model_state, batch["image"], rng)
    loss = jnp.mean(self.task.loss(logits, batch["label"], self.config.label_smoothing))
    metrics = {"accuracy": jnp.mean(self.task.correct(logits, batch["label"]))}
    return loss, (model_state, metrics)
