"""The gradient-quality diagnostic of smooth adversarial training (Xie thesis, ch. 5, sec. 5.3).

Table 5.1 keeps ReLU in every forward pass but replaces its derivative by
parametric softplus' sigmoid(alpha x) (eq. 5.3) in the backward pass of the
attacker (inner maximisation), of the weight update (outer minimisation), or
of both. The activation 'relu_softplus_grad:<alpha>' (`activations.relu_softplus_grad`)
is that ReLU; since it has no parameters and the same forward values as
'relu', the network that uses it is a `clone` of the model with identical
variables. `config.sat.softplus_grad` picks who uses the clone (per-example
and heap adversarial training, and AdvProp):

  ''          nobody (plain ReLU adversarial training)
  'attacker'  the logits_fn the adversary differentiates
  'weights'   the training loss the weights descend
  'both'      both

Smooth adversarial training proper (sec. 5.4) needs none of this: it is a
smooth activation name in `config.model.activation` ('silu',
'parametric_softplus', 'smooth_relu', 'celu', ...).
"""

import flax.linen as nn
import ml_collections

from advjax.errors import ConfigError

SOFTPLUS_GRAD_MODES = ("", "attacker", "weights", "both")


def config_block() -> ml_collections.ConfigDict:
  """The documented `config.sat` block."""
  c = ml_collections.ConfigDict()
  # Table 5.1's diagnostic: ReLU forward with parametric softplus' derivative
  # backward, for '' nobody, 'attacker', 'weights' or 'both'.
  c.softplus_grad = ""
  c.softplus_alpha = 10.0  # alpha of that backward pass, sigmoid(alpha x) (eq. 5.3).
  return c


def softplus_grad_model(model: nn.Module, alpha: float) -> nn.Module:
  """`model` with every ReLU's backward pass replaced by sigmoid(alpha x).

  Raises:
    ConfigError: the model's activation is not 'relu' (the forward pass would change).
  """
  if model.activation != "relu":
    raise ConfigError(f"the softplus-gradient diagnostic needs activation 'relu', not {model.activation!r}")
  return model.with_options(activation=f"relu_softplus_grad:{float(alpha)!r}")


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks `config.sat`; raises ConfigError naming the first bad field."""
  mode = config.sat.softplus_grad
  if mode not in SOFTPLUS_GRAD_MODES:
    raise ConfigError(f"config.sat.softplus_grad: unknown mode {mode!r}; known: "
                      f"{', '.join(repr(m) for m in SOFTPLUS_GRAD_MODES)}")
  if mode and config.model.activation != "relu":
    raise ConfigError(f"config.sat.softplus_grad: smooths ReLU's backward pass, so model.activation must be "
                      f"'relu', not {config.model.activation!r}")
  if not config.sat.softplus_alpha > 0:
    raise ConfigError("config.sat.softplus_alpha: must be positive")


def attacker_and_trainee(model: nn.Module, config: ml_collections.ConfigDict) -> tuple[nn.Module, nn.Module]:
  """The models the attacker and the weight update differentiate, per `config.sat.softplus_grad`.

  Args:
    model: the classifier.
    config: the experiment config.

  Returns:
    (attack_model, train_model); each is `model` or its softplus-gradient clone.
  """
  mode = config.sat.softplus_grad
  if mode not in SOFTPLUS_GRAD_MODES:
    raise ConfigError(f"config.sat.softplus_grad: unknown mode {mode!r}; known: "
                      f"{', '.join(repr(m) for m in SOFTPLUS_GRAD_MODES)}")
  if not mode:
    return model, model
  smooth = softplus_grad_model(model, config.sat.softplus_alpha)
  return (smooth if mode in ("attacker", "both") else model,
          smooth if mode in ("weights", "both") else model)
