"""Training: the train state, objectives, step factories and the loop that runs them.

Importing any part of the package registers the objectives whose steps live
in their own modules (`uat`, `advprop`) in `steps.CUSTOM_STEPS` and `objectives.EXTRAS`.
"""

from advjax.training import advprop  # noqa: F401  (registers advprop)
from advjax.training import uat  # noqa: F401  (registers uat_alternating, uat_simultaneous)
