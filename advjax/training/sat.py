"""The gradient-quality diagnostic of smooth adversarial training (Xie thesis, ch. 5, sec. 5.3).

Table 5.1 keeps ReLU in every forward pass but replaces its derivative by
parametric softplus' sigmoid(alpha x) (eq. 5.3) in the backward pass of the
attacker (inner maximisation), of the weight update (outer minimisation), or
of both. The activation 'relu_softplus_grad:<alpha>' (`activations.relu_softplus_grad`)
is that ReLU; since it has no parameters and the same forward values as
'relu', the network that uses it is a `clone` of the model with identical
variables. `SATConfig.softplus_grad`, the `sat` block of the adversarial
objectives (`config.adversarial.sat`, `config.advprop.sat`), picks who uses
the clone:

  ''          nobody (plain ReLU adversarial training)
  'attacker'  the logits_fn the adversary differentiates
  'weights'   the training loss the weights descend
  'both'      both

Smooth adversarial training proper (sec. 5.4) needs none of this: it is a
smooth activation name in `config.model.activation` ('silu',
'parametric_softplus', 'smooth_relu', 'celu', ...).
"""

import dataclasses
import math

import flax.linen as nn

from advjax.errors import ConfigError

SOFTPLUS_GRAD_MODES = ("", "attacker", "weights", "both")


@dataclasses.dataclass(frozen=True)
class SATConfig:
  """Table 5.1's diagnostic, the `sat` block of the adversarial objectives.

  Attributes:
    softplus_grad: who differentiates ReLU with parametric softplus'
      derivative: '' nobody, 'attacker', 'weights' or 'both'.
    softplus_alpha: alpha of that backward pass, sigmoid(alpha x) (eq. 5.3).
  """
  softplus_grad: str = ""
  softplus_alpha: float = 10.0

  def __post_init__(self):
    if self.softplus_grad not in SOFTPLUS_GRAD_MODES:
      raise ConfigError(f"softplus_grad: unknown mode {self.softplus_grad!r}; known: "
                        f"{', '.join(repr(m) for m in SOFTPLUS_GRAD_MODES)}")
    if not (math.isfinite(self.softplus_alpha) and 0 < self.softplus_alpha <= 1e6):
      raise ConfigError(f"softplus_alpha={self.softplus_alpha!r} must be in (0, 1e6]")


def softplus_grad_model(model: nn.Module, alpha: float) -> nn.Module:
  """`model` with every ReLU's backward pass replaced by sigmoid(alpha x).

  Raises:
    ConfigError: the model's activation is not 'relu' (the forward pass would change).
  """
  if model.activation != "relu":
    raise ConfigError(f"the softplus-gradient diagnostic needs activation 'relu', not {model.activation!r}")
  return model.with_options(activation=f"relu_softplus_grad:{float(alpha)!r}")


def check_activation(cfg: SATConfig, activation: str, field: str) -> None:
  """Raises ConfigError naming `field` if the diagnostic is on for a model whose activation is not ReLU."""
  if cfg.softplus_grad and activation != "relu":
    raise ConfigError(f"config.{field}.softplus_grad: smooths ReLU's backward pass, so model.activation must be "
                      f"'relu', not {activation!r}")


def attacker_and_trainee(model: nn.Module, cfg: SATConfig) -> tuple[nn.Module, nn.Module]:
  """The models the attacker and the weight update differentiate, per `cfg.softplus_grad`.

  Args:
    model: the classifier.
    cfg: the diagnostic's settings.

  Returns:
    (attack_model, train_model); each is `model` or its softplus-gradient clone.
  """
  mode = cfg.softplus_grad
  if not mode:
    return model, model
  smooth = softplus_grad_model(model, cfg.softplus_alpha)
  return (smooth if mode in ("attacker", "both") else model,
          smooth if mode in ("weights", "both") else model)
