"""What a model and a trainer need to know about a dataset before seeing it.

`DatasetInfo` is the static description every dataset in the registry returns:
the number of classes and the image shape size the model, the per-channel
mean and standard deviation feed the normalisation layer inside the model
(images leave the data pipeline in [0, 1], un-normalised, so that attack
budgets are measured in pixel units), and the split sizes fix the number of
steps per epoch and the size of the evaluation loop.
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """Static description of a dataset as the pipeline delivers it.

  Attributes:
    name: registry name of the dataset, e.g. 'cifar10'.
    num_classes: number of classes (after any class subset is applied).
    image_shape: (height, width, channels) of the images the pipeline yields.
    mean: per-channel mean of the training images in [0, 1], length channels.
    std: per-channel standard deviation of the training images in [0, 1].
    num_train: number of training examples.
    num_test: number of evaluation ('test') examples.
    dense_labels: True when labels are [height, width] maps (segmentation,
      -1 marks pixels to ignore); False when they are class indices.
  """

  name: str
  num_classes: int
  image_shape: tuple[int, int, int]
  mean: tuple[float, ...]
  std: tuple[float, ...]
  num_train: int
  num_test: int
  dense_labels: bool = False
