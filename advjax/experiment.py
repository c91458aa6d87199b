"""Everything built from a config before training or evaluation starts.

`Experiment(config)` validates the config, then builds, in this order and
from the config alone: the device mesh, the training data stream (with the
views the objective needs), the task of the data, the network, the
optimiser and its schedule, and the objective. It creates the train state,
reads model variables from checkpoints (to resume, fine-tune, load a
pretrained backbone or evaluate), and hands evaluators their `EvalContext`.

It writes nothing: the training loop (`advjax.training.trainer`) and the
drivers (`advjax.runs`) write the run directory, and every read of another
run goes through `advjax.run_dir`.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import traverse_util

from advjax.cpu import compilation
from advjax import attacks, config as config_lib, data, models, parallel, run_dir, saved_runs, tasks
from advjax.errors import CheckpointError
from advjax.evaluation.context import EvalContext, name_to_int, named_key
from advjax.training import objectives, optim
from advjax.training.train_state import TrainState, create_train_state


def data_seed(seed: int, name: str) -> int:
  """The seed of a named data stream of a run (evaluation streams differ from training's)."""
  return int(np.random.SeedSequence([seed, name_to_int(name)]).generate_state(1)[0])


class Experiment:
  """Data, task, model, optimiser and objective of a config, on a mesh."""

  def __init__(self, config: ml_collections.ConfigDict, devices=None):
    self.config = config
    self.mesh = parallel.make_mesh(devices)
    self.parsed = config_lib.validate(config, num_devices=self.mesh.size)
    # Every field's default: a resumed run's config.json may predate some of them.
    self.defaults = config_lib.base_config().to_dict()
    self.process_index, self.process_count = jax.process_index(), jax.process_count()
    objective_cls = objectives.get(config.objective)
    block = self.parsed.objective_block()
    self.train_source = data.make_train_source(
        config.data, global_batch_size=config.batch_size, seed=config.seed,
        process_index=self.process_index, process_count=self.process_count,
        augmented_view="image_aug" in objective_cls.views(block))
    self.info = self.train_source.info
    data.check_split(config.data, config.eval.split)  # Not only when the first evaluation starts.
    self.task = tasks.for_dataset(self.info)
    m = config.model
    mean, std = self.info.mean, self.info.std
    if m.backbone_checkpoint:
      if run_dir.latest_step(m.backbone_checkpoint) is None:
        raise CheckpointError(f"no checkpoints in {m.backbone_checkpoint!r} (model.backbone_checkpoint, the run "
                              "to start from)")
      mean, std = saved_runs.input_normalisation(m.backbone_checkpoint, "model.backbone_checkpoint")
    self.model = models.from_config(m, num_classes=self.info.num_classes, mean=mean, std=std)
    self._check_output_shape()
    self.steps_per_epoch = self.train_source.steps_per_epoch
    self.total_steps = config_lib.resolve_steps(config, self.steps_per_epoch)
    trainable = (lambda key: self.model.head_owns(key)) if m.freeze_backbone else None
    self.tx, self.schedule = optim.make_optimizer(config, self.steps_per_epoch, self.total_steps, trainable)
    self.objective = objectives.build(config, model=self.model, task=self.task, schedule=self.schedule,
                                      total_steps=self.total_steps, steps_per_epoch=self.steps_per_epoch)
    # One builder per experiment: evaluators jit over it (static) and take the variables traced.
    self.model_fn = functools.partial(attacks.make_logits_fn, self.objective.eval_model())

  def _check_output_shape(self) -> None:
    """A segmentation head on a classification dataset, or the reverse, is one ConfigError."""
    x = jax.ShapeDtypeStruct((1, *self.info.image_shape), jnp.float32)
    key = jax.random.key(0)
    out = jax.eval_shape(lambda v: self.model.init_with_output({"params": key, "dropout": key}, v)[0], x)
    labels = tuple(self.info.image_shape[:2]) if self.info.dense_labels else ()
    self.task.check_shapes(out.shape[1:], labels)

  def init_state(self) -> TrainState:
    """A fresh state, replicated over the mesh."""
    rng = jax.random.PRNGKey(self.config.seed)
    image_shape = tuple(self.info.image_shape)

    def init(rng):
      return create_train_state(self.model, self.tx, rng, image_shape, self.objective.init_extras(image_shape),
                                aux_bn_sets=self.objective.bn_sets())

    return compilation.jit(init, run_once=True, out_shardings=parallel.replicated(self.mesh))(rng)

  def restore_model(self, workdir: str) -> tuple[int, dict[str, Any]]:
    """The step and model variables of a run's latest checkpoint, whatever its objective and optimiser.

    Evaluation needs only these, so one config's evaluation can be applied
    to runs trained with other objectives (ERM, PGD-AT, UAT) of the same model.
    """
    return run_dir.read_variables(workdir, self.init_state().variables)

  def init_from(self, workdir: str, state: TrainState) -> TrainState:
    """`state` with the model variables of another run's latest checkpoint (fine-tuning).

    Only the plain model is loaded; auxiliary BatchNorm sets (AdvProp) that
    the other run may not have keep their initial scale, offset and statistics.
    """
    loaded = run_dir.read_variables(workdir, models.aux_bn.export_main(state.variables))[1]
    params = traverse_util.flatten_dict(state.params)
    params.update(traverse_util.flatten_dict(loaded["params"]))
    return state.replace(params=traverse_util.unflatten_dict(params),
                         model_state={**state.model_state, **{k: v for k, v in loaded.items() if k != "params"}})

  def init_backbone(self, workdir: str, state: TrainState) -> TrainState:
    """`state` with every backbone variable (all but the head's) from another run's latest checkpoint.

    The other run may have another head (a classifier under a segmentation
    model: the robust-backbone model of the robust-segmentation paper).

    Raises:
      CheckpointError: no checkpoint, or a backbone that does not fit.
    """
    template = {collection: {k: v for k, v in tree.items() if not self.model.head_owns(k)}
                for collection, tree in models.aux_bn.export_main(state.variables).items()}
    if not template["params"]:
      raise CheckpointError("model.backbone_checkpoint: this model has no backbone variables to load")
    loaded = run_dir.read_variables(workdir, template)[1]
    return state.replace(params={**state.params, **loaded["params"]},
                         model_state={k: {**v, **loaded.get(k, {})} for k, v in state.model_state.items()})

  def eval_batches(self, split: str | None = None) -> Iterator[dict[str, jax.Array]]:
    """The held-out split (its first `eval.num_examples`) as global sharded batches with a padding mask."""
    limit = self.config.eval.num_examples
    global_size = self.config.eval.batch_size
    local_size = global_size // self.process_count
    for i, batch in enumerate(data.make_eval_batches(
        self.config.data, split or self.config.eval.split, batch_size=global_size,
        process_index=self.process_index, process_count=self.process_count)):
      if limit:
        if i * global_size >= limit:
          return
        # Global index of each local row: this process holds rows [p*L, (p+1)*L) of batch i.
        index = i * global_size + self.process_index * local_size + np.arange(local_size)
        batch = dict(batch, mask=batch["mask"] * (index < limit))
      yield parallel.shard_batch(batch, self.mesh)

  def train_stream(self, batch_size: int, name: str) -> Callable[[], Iterator[dict[str, jax.Array]]]:
    """A restartable stream of un-augmented training batches whose order is fixed by `name`.

    Adversaries fitted on training data (the universal one) read it; each call
    of the returned function starts the same stream again.
    """
    data_cfg = self.config.data.copy_and_resolve_references()
    data_cfg.augment = False
    source = data.make_train_source(
        data_cfg, global_batch_size=batch_size, seed=data_seed(self.config.seed, name),
        process_index=self.process_index, process_count=self.process_count)
    return lambda: (parallel.shard_batch(source.batch(k), self.mesh) for k in itertools.count())

  def eval_context(self, out_dir: str | None = None) -> EvalContext:
    """The evaluators' context; the held-out batches are read once, on first use."""
    return EvalContext(
        task=self.task, model_fn=self.model_fn, held_out=functools.cache(lambda: list(self.eval_batches())),
        train_stream=self.train_stream, image_shape=tuple(self.info.image_shape),
        rng=named_key(jax.random.PRNGKey(self.config.seed), "eval"), out_dir=out_dir,
        model=self.objective.eval_model(),
        history=None if out_dir is None else functools.cache(lambda: self.history(out_dir)))

  def history(self, workdir: str) -> list[tuple[int, dict[str, Any]]]:
    """Every checkpoint of a run as (step, model variables), oldest first (analyses over training).

    A run that started from another run's model (`config.init_checkpoint`)
    begins its history with that model at step 0, as the universality paper
    counts the clean pre-trained model as epoch 0.

    Raises:
      CheckpointError: the run, or the run it started from, has no checkpoint.
    """
    state = self.init_state()
    out = []
    source = self.config.init_checkpoint
    if source and 0 not in run_dir.all_steps(workdir):
      if run_dir.latest_step(source) is None:
        raise CheckpointError(f"no checkpoints in {source!r} (config.init_checkpoint, the model the run "
                              "started from, epoch 0 of its history)")
      out.append((0, self.init_from(source, state).variables))
    return out + run_dir.history(workdir, state.variables)
