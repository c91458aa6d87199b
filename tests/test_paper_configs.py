"""The papers' large-scale configs build their model and run one training step on mock data.

tfds' `mock_data` stands in for the datasets (nothing is downloaded); the
models are built at full size but evaluated abstractly where a real step
would not fit the test budget (ImageNet-scale networks), and stepped for real
where it does.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from advjax import config as config_lib
from advjax import errors
from advjax import models, saved_runs
from configs import denoise_imagenet
from tests import numpy_values


@pytest.mark.parametrize("arg,params", [("resnet152", 60_192_808), ("resnext101", 88_791_336)])
def test_denoising_imagenet_configs_build_their_models(arg, params):
  config = denoise_imagenet.get_config(arg)
  config_lib.validate(config, num_devices=8)
  model = models.create_model(config.model.name, num_classes=1000, insert_block=config.model.insert_block,
                              insert_after=config.model.insert_after)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 224, 224, 3)))
  flat = jax.tree_util.tree_flatten_with_path(shapes["params"])[0]
  own = sum(leaf.size for path, leaf in flat if "denoise" not in str(path[0]))
  blocks = {str(path[0].key) for path, _ in flat if "denoise" in str(path[0])}
  assert own == params  # torchvision's ResNet-152 / ResNeXt-101 32x8d.
  assert blocks == {"stage1_denoise", "stage2_denoise", "stage3_denoise", "stage4_denoise"}


def _check_first_step(step, metrics):
  """A first training step that ran: step 1, finite positive loss, a gradient."""
  assert step == 1 and bool(metrics["finite"]) and np.isfinite(metrics["loss"]) and metrics["loss"] > 0
  assert metrics["grad_norm"] > 0


def _numpy_state(experiment):
  """The experiment's train state with values drawn in NumPy (no init program to compile), replicated.

  Its init program is tested on small models; here the values only need to be plausible.
  """
  from advjax import parallel
  return jax.device_put(numpy_values.draw_like(jax.eval_shape(experiment.init_state)),
                        parallel.replicated(experiment.mesh))


def _train_one_step(experiment, state, batch):
  """(state, host metrics) after one step of the trainer's compiled step (guarded, sharded, state donated)."""
  from advjax import parallel
  from advjax.training import steps
  train_step = steps.compile_train_step(steps.guard(experiment.objective.train_step), state, experiment.mesh)
  state, metrics = train_step(state, parallel.shard_batch(batch, experiment.mesh))
  return state, jax.device_get(metrics)


def test_denoising_imagenet_resnext101_config_trains_one_step_on_mock_data():
  """The full model and recipe (ResNeXt-101 32x8d with four non-local blocks, targeted
  mixed-start PGD on running statistics, label smoothing) for one real step, at 32 px,
  batch 2 and one attack step; ResNet-152's full-size step is traced below.

  The step is the trainer's compiled step (guarded, sharded, state donated) on a
  batch of the config's input pipeline; the trainer's own loop (checkpoints,
  metrics, resumption) is the same for every config and tested elsewhere.
  """
  from advjax.experiment import Experiment

  config = denoise_imagenet.get_config("resnext101")
  config.data.image_size = 32
  config.num_steps, config.batch_size = 1, 2
  config.adversarial.attack.num_steps = 1
  with tfds.testing.mock_data(num_examples=4):
    experiment = Experiment(config, jax.devices()[:1])
    batch = experiment.train_source.batch(0)
  state = _numpy_state(experiment)
  before = jax.device_get(state.model_state)
  state, metrics = _train_one_step(experiment, state, batch)
  _check_first_step(int(state.step), metrics)  # (The warm-up's first learning rate is 0: the weights stay.)
  # The weight update ran in training mode: the last denoising block's running statistics moved.
  after = jax.device_get(state.model_state)
  moved = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(after["batch_stats"]["stage4_denoise"]),
                                                    jax.tree.leaves(before["batch_stats"]["stage4_denoise"]))]
  assert moved and all(moved)


def test_denoising_imagenet_resnet152_config_traces_its_full_size_step_on_mock_data():
  """ResNet-152 with denoising at 224 px and the global batch of 4096, with the 30-step
  attack: the whole training step is traced abstractly (a real step does not fit the
  test budget on a CPU), and its outputs have the state's structure."""
  from advjax.experiment import Experiment

  config = denoise_imagenet.get_config("resnet152")
  with tfds.testing.mock_data(num_examples=config.batch_size):
    experiment = Experiment(config, jax.devices()[:1])
  state = jax.eval_shape(experiment.init_state)
  batch = {"image": jax.ShapeDtypeStruct((4096, 224, 224, 3), jnp.float32),
           "label": jax.ShapeDtypeStruct((4096,), jnp.int32)}
  new_state, metrics = jax.eval_shape(experiment.objective.train_step, state, batch)
  assert jax.tree.structure(new_state) == jax.tree.structure(state)
  assert all(a.shape == b.shape for a, b in zip(jax.tree.leaves(new_state), jax.tree.leaves(state)))
  assert {"loss", "grad_norm", "adv_accuracy"} <= set(metrics)
  assert {"stage1_denoise", "stage4_denoise"} <= set(state.params)


def test_universality_cifar10_config_has_the_papers_settings_and_trains_one_step(tmp_path):
  from advjax import runs
  from configs import universality_cifar10

  config = universality_cifar10.get_config()
  config_lib.validate(config, num_devices=8)
  a, e = config.adversarial.attack, config.evals
  # Sec. 2: BI from xi_0 = 0, eps 4, alpha 1, 10 iterations, predicted labels, sigma = 0 (weight 1).
  assert (a.eps, a.step_size, a.num_steps, a.init, a.labels) == (4.0, 1.0, 10, "zero", "predicted")
  assert (config.model.name, config.objective, config.adversarial.weight) == ("preact_resnet18", "pgd_at", 1.0)
  assert config.checkpoint_every_steps == 50_000 // config.batch_size and config.keep_checkpoints >= 252
  assert universality_cifar10.clean_config().num_epochs == 200
  # Appendix D: eps 10, alpha 2.5, m 128, K 10, 200 iterations (the classifier's and the detector's).
  for entry in (e.universal_epochs, e.detection):
    u = entry.universal
    assert (u.eps, u.step_size, entry.universal_batch, u.grad_batches, u.num_steps) == (10.0, 2.5, 128, 10, 200)
  d = e.detection
  assert d.universal_target == "adversarial" and tuple(d.detector_features) == (96, 192, 192)
  # Appendices A-C: 256 inputs; 1024 perturbations on 5000 other inputs at epochs 0, 1, 15, 251.
  assert e.stability.max_examples == e.transfer.max_examples == 256
  assert tuple(e.transfer.epochs) == (0, 5, 15, 51, 251)
  assert (e.sharedness.max_examples, e.sharedness.num_other, tuple(e.sharedness.epochs)) == (1024, 5000, (0, 1, 15, 251))
  for entry in (e.stability, e.transfer, e.sharedness, e.destruction, e.detection):
    assert (entry.attack.eps, entry.attack.step_size, entry.attack.num_steps) == (4.0, 1.0, 10)
  # One step of the full-size network on mock CIFAR-10, from scratch (no clean run to start from).
  config.init_checkpoint = ""
  config.num_steps, config.batch_size, config.eval.batch_size, config.eval.num_examples = 1, 4, 4, 4
  with tfds.testing.mock_data(num_examples=8):
    summary = runs.train_and_evaluate(config, str(tmp_path), jax.devices()[:1])
  _check_first_step(summary["steps"], summary["final_train_metrics"])
  assert summary["evals"]["clean"]["num_examples"] == 4


# ------------------------------------------------------------------ segmentation


def _abstract_model(config, num_classes, image_shape):
  """The config's model and its variables and output, abstract (shapes only), on one [1, *image_shape] input."""
  m = config.model
  model = models.create_model(m.name, num_classes=num_classes, activation=m.activation, norm=m.norm,
                              head=m.head, frozen_backbone=m.freeze_backbone)
  x = jnp.zeros((1, *image_shape))
  out, variables = jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), x))
  return model, variables, out


def _count(tree):
  return sum(leaf.size for leaf in jax.tree.leaves(tree))


def _shrink_for_one_step(config, image_size):
  """The smallest run that still goes through the config's objective and its train_evals."""
  config.data.image_size = image_size
  config.init_checkpoint = ""
  config.num_steps, config.batch_size = 1, 2
  config.eval.batch_size, config.eval.num_examples = 2, 2
  config.adversarial.attack.num_steps = 1
  config.evals.pgd.eps, config.evals.pgd.attack.num_steps = config.evals.pgd.eps[:1], 1


def _check_evals(results):
  clean, pgd = results["clean"], results["pgd"]["eps8"]
  assert set(results) == {"clean", "pgd"} and clean["num_examples"] == pgd["num_examples"] == 2
  # The attacked images are scored on the same labelled pixels as the clean ones (void excluded).
  assert pgd["num_pixels"] == clean["num_pixels"] > 0


def _check_one_step_summary(summary):
  _check_first_step(summary["steps"], summary["final_train_metrics"])
  _check_evals(summary["evals"])


@pytest.mark.parametrize("arg", ["shared", "at", "erm"])
def test_cityscapes_fcn8_config_has_the_papers_settings_and_full_size_model(arg):
  from configs import seg_cityscapes_fcn8

  config = seg_cityscapes_fcn8.get_config(arg)
  a = config.adversarial.attack
  # Sec. 6.3: the rows, (objective, s, eps, sigma): AT eps 8, sigma 0.5; shared AT s 5, eps 30, sigma 0.7.
  rows = {"shared": ("shared_at", 5, 30.0, 0.7), "at": ("pgd_at", 1, 8.0, 0.5), "erm": ("erm", 1, 8.0, 0.0)}
  assert (config.objective, config.adversarial.heap_size, a.eps, config.adversarial.weight) == rows[arg]
  # Sec. 6.3: Cityscapes (19 classes) downsampled to 1024x512.
  assert (config.data.name, config.data.image_size) == ("cityscapes", 512)
  # Sec. 6.3: FCN-8 [Long et al.] on VGG-16 (no normalisation, fc6/fc7 of 4096).
  assert (config.model.name, config.model.norm, config.model.head) == ("vgg16", "none", "fcn8s_fc")
  # Sec. 6.3: Adam, batch 5, lr 1e-4 annealed to 1e-5.
  assert (config.optimizer.name, config.batch_size, config.optimizer.learning_rate) == ("adam", 5, 1e-4)
  assert (config.schedule.name, config.schedule.decay_factor) == ("piecewise", 0.1)
  # Sec. 6.3: 5 steps of untargeted PGD with alpha = 0.4 eps.
  assert (a.num_steps, a.step_size, a.targeted, a.init) == (5, 0.4 * a.eps, False, "uniform")
  # Sec. 4.3: loss thresholding at kappa = -log 0.2.
  assert (a.loss, a.kappa) == ("clipped_cross_entropy", -np.log(0.2))
  if arg != "erm":
    # Sec. 6.3: fine-tuning of the pretrained model for 20 epochs, annealed after 15.
    assert (config.init_checkpoint, config.num_epochs) == ("runs/seg_cityscapes_fcn8_erm", 20)
    assert tuple(config.schedule.boundaries) == (15.0,)
  # Sec. 6.3's evaluation: delta 0.95 on 16 test images; universal: m_k = 5, K = 200, gamma 0.99, beta 2,
  # no loss thresholding, b = 10; targeted toward a static scene.
  assert (config.evals.eps_adv.rate, config.evals.eps_adv.max_examples) == (0.95, 16)
  for name, targeted in (("eps_uni_targeted", True), ("eps_uni_untargeted", False)):
    e = config.evals[name]
    u = e.universal
    assert (e.rate, e.max_examples, e.batch_size, e.search_steps, e.target_scene) == (0.95, 16, 5, 10, targeted)
    assert (u.num_steps, u.gamma, u.beta, u.loss, u.targeted) == (200, 0.99, 2.0, "cross_entropy", targeted)
  # The paper's batch of 5 (one heap of s = 5) runs on one device; on 8, 8 times the batch.
  config_lib.validate(config, num_devices=1)
  with pytest.raises(errors.ConfigError, match="batch_size"):
    config_lib.validate(config, num_devices=8)
  config.batch_size = config.eval.batch_size = 40
  config.evals.eps_uni_targeted.batch_size = config.evals.eps_uni_untargeted.batch_size = 40
  config_lib.validate(config, num_devices=8)
  _, variables, out = _abstract_model(config, 19, (512, 1024, 3))
  # VGG-16's 13 convolutions, fc6, fc7, the three score layers and the two 2x upsamplings
  # for 19 classes (the derivation is in tests/models/test_fcn.py).
  assert _count(variables["params"]) == 14_714_688 + 102_764_544 + 16_781_312 + 4864 * 19 + 3 * 19 + 32 * 19 * 19
  assert _count(variables["params"]) == 134_364_569 and out.shape == (1, 512, 1024, 19)


@pytest.mark.parametrize("arg", ["shared"])  # 'erm' and 'at' run subsets of the same program.
def test_cityscapes_fcn8_config_trains_one_step_on_mock_data(arg):
  """The full 1024x512 data shape is checked on the mocked dataset; the step runs at 128x64.

  A 134M-parameter FCN-8s step at 1024x512 with its 5-step heap adversary
  does not fit the test budget on the CPU, so the step shrinks the image
  (data.image_size 64: 128x64), the batch (2, one heap of s = 2), the
  adversary (1 step) and the evaluation (2 images, PGD-1 at one radius).
  'at' is the same program as 'shared' with s = 1 (covered by the heap tests).
  The step is the trainer's compiled step on the config's own batch, from
  values drawn in NumPy, and the trained variables go through the config's
  `train_evals`: what a run does after its last step, without the init
  program and the 1 GB checkpoint (the trainer's loop is tested elsewhere).
  """
  from advjax import evaluation
  from advjax.data import pipeline
  from advjax.experiment import Experiment
  from configs import seg_cityscapes_fcn8

  config = seg_cityscapes_fcn8.get_config(arg)
  with tfds.testing.mock_data(num_examples=4):
    assert pipeline.get_info(config.data).image_shape == (512, 1024, 3)
    _shrink_for_one_step(config, 64)
    config.adversarial.heap_size = min(config.adversarial.heap_size, 2)
    experiment = Experiment(config, jax.devices()[:1])
    batch = experiment.train_source.batch(0)
    assert batch["image"].shape == (2, 64, 128, 3) and batch["label"].shape == (2, 64, 128)
    state, metrics = _train_one_step(experiment, _numpy_state(experiment), batch)
    results = evaluation.run(config.evals, experiment.eval_context(), state.variables,
                             names=tuple(config.train_evals))
  _check_first_step(int(state.step), metrics)
  _check_evals(results)


def _write_voc_folder(root, num_images=4):
  """A tiny VOCdevkit/VOC2012 folder: random JPEGs of varying size, palette-PNG class maps with a void band."""
  from PIL import Image

  from advjax.data import segmentation

  voc = root / "VOCdevkit" / "VOC2012"
  for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
    (voc / sub).mkdir(parents=True)
  rng = np.random.default_rng(0)
  ids = [f"2007_{i:06d}" for i in range(num_images)]
  for i, image_id in enumerate(ids):
    height, width = 40 + 8 * i, 60 - 4 * i
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(voc / f"JPEGImages/{image_id}.jpg")
    label = rng.integers(0, 21, (height, width)).astype(np.uint8)
    label[height // 2] = segmentation.VOC_IGNORE
    png = Image.fromarray(label, mode="P")
    png.putpalette(segmentation.voc_palette(256).ravel().tolist())
    png.save(voc / f"SegmentationClass/{image_id}.png")
  half = num_images // 2
  (voc / "ImageSets/Segmentation/train.txt").write_text("".join(f"{i}\n" for i in ids[:half]))
  (voc / "ImageSets/Segmentation/val.txt").write_text("".join(f"{i}\n" for i in ids[half:]))


@pytest.mark.parametrize("arg,params", [("resnet50", 35_322_218), ("resnet101", 54_314_346), ("rb", 35_322_218)])
def test_voc_fcn_resnet_config_has_the_papers_settings_and_full_size_model(arg, params):
  from configs import seg_voc_fcn_resnet

  config = seg_voc_fcn_resnet.get_config(arg)
  a, e = config.adversarial.attack, config.evals.pgd
  # Sec. 5.1: FCN-ResNet50 (AT-50, RB) / FCN-ResNet101 (AT-101), torchvision's, with its aux classifier.
  backbone = "resnet101_dilated" if arg == "resnet101" else "resnet50_dilated"
  assert (config.model.name, config.model.head) == (backbone, "fcn_aux")
  # Sec. 5.1: 21 classes (VOC's, background included); VOC 2012 stands in for COCO's VOC subset.
  assert config.data.name == "voc2012_seg"
  # Sec. 5.1: AT-50 / AT-101 adversarially trained with a PGD adversary for 9 / 3 epochs.
  # Sec. 5.1: RB's robust ImageNet ResNet-50 backbone, its classifier fine-tuned for 20 epochs.
  expected = {"resnet50": ("pgd_at", 9, False), "resnet101": ("pgd_at", 3, False), "rb": ("erm", 20, True)}[arg]
  assert (config.objective, config.num_epochs, config.model.freeze_backbone) == expected
  assert config.model.backbone_checkpoint == {"rb": "runs/robust_resnet50_imagenet"}.get(
      arg, f"runs/erm_{arg}_imagenet")
  # Sec. 5.1: robust accuracy under the same PGD adversary as training.
  assert (a.norm, a.init, a.targeted, e.attack.targeted, e.attack.restarts) == ("linf", "uniform", False, False, 1)
  assert (e.eps, e.attack.num_steps, e.attack.step_size) == ((a.eps,), a.num_steps, a.step_size)
  assert config.train_evals == ("clean", "pgd")
  config_lib.validate(config, num_devices=8)
  model, variables, out = _abstract_model(config, 21, (512, 512, 3))
  # torchvision's fcn_resnet50 / fcn_resnet101 with aux_classifier, 21 classes (tests/models/test_fcn.py).
  assert _count(variables["params"]) == params and out.shape == (1, 512, 512, 21)
  if arg == "rb":
    # The robust backbone is a 'resnet50' classifier run: its variables outside the classifier
    # are exactly the segmentation model's backbone variables.
    classifier = models.create_model("resnet50", num_classes=1000)
    _, imagenet = jax.eval_shape(lambda: classifier.init_with_output(jax.random.key(0), jnp.zeros((1, 224, 224, 3))))

    def backbone_shapes(net, tree):
      return {c: jax.tree.map(lambda leaf: leaf.shape, {k: v for k, v in tree[c].items() if not net.head_owns(k)})
              for c in ("params", "batch_stats")}

    assert backbone_shapes(classifier, imagenet) == backbone_shapes(model, variables)


@pytest.fixture(name="voc_at50_run", scope="module")
def _voc_at50_run(tmp_path_factory):
  """AT-50 stepped once on a four-image VOC folder at 64x64: (folder, run directory, summary).

  TFDS has no VOC segmentation (its `voc` holds boxes), so the data is a
  tiny VOCdevkit folder rather than tfds mock data. The full 512x512 size is
  checked on the folder's dataset info; the step shrinks the image
  (data.image_size 64), batch (2), adversary (PGD-1) and evaluation (2
  images, PGD-1). AT-101 is AT-50's program with more blocks (its model is
  checked abstractly above).
  """
  from advjax import runs
  from advjax.data import pipeline
  from configs import seg_voc_fcn_resnet

  root = tmp_path_factory.mktemp("voc")
  _write_voc_folder(root)
  config = seg_voc_fcn_resnet.get_config("resnet50")
  config.data.data_dir = str(root)
  assert pipeline.get_info(config.data).image_shape == (512, 512, 3)
  _shrink_for_one_step(config, 64)
  config.model.backbone_checkpoint = ""
  workdir = str(root / "resnet50")
  return root, workdir, runs.train_and_evaluate(config, workdir, jax.devices()[:1])


def test_voc_fcn_resnet50_config_trains_one_step_on_a_voc_folder(voc_at50_run):
  """AT-50 (see the fixture for what is full size and what is stepped)."""
  _check_one_step_summary(voc_at50_run[2])


def test_voc_fcn_resnet_rb_config_trains_one_step_on_a_frozen_backbone(voc_at50_run):
  """RB on the AT-50 run's backbone, frozen, one step at 64x64 as in the fixture.

  The real backbone run is a 'resnet50' ImageNet classifier, whose backbone
  variables are those of AT-50's (checked above).
  """
  from advjax import runs
  from configs import seg_voc_fcn_resnet

  root, backbone_run, _ = voc_at50_run
  config = seg_voc_fcn_resnet.get_config("rb")
  config.data.data_dir = str(root)
  _shrink_for_one_step(config, 64)
  config.model.backbone_checkpoint = backbone_run
  config.train_evals = ("clean",)  # The fixture covers the PGD evaluation; this test is about the frozen backbone.
  summary = runs.train_and_evaluate(config, str(root / "rb"), jax.devices()[:1])
  _check_first_step(summary["steps"], summary["final_train_metrics"])
  assert summary["evals"]["clean"]["num_examples"] == 2
  # Frozen: after the step the backbone's weights and BatchNorm statistics are still AT-50's; the head moved.
  model, rb, _ = saved_runs.load_model(str(root / "rb"), "test")
  _, at50, _ = saved_runs.load_model(backbone_run, "test")
  for collection in ("params", "batch_stats"):
    for key in rb[collection]:
      same = all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(rb[collection][key]),
                                                      jax.tree.leaves(at50[collection][key])))
      assert same != model.head_owns(key), (collection, key)
