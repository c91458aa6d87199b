"""Figures as files: perturbations, example grids, Pareto fronts, curves and matrices, all headless PNG.

The papers show perturbations amplified so that the ball fills the grey range:
a value in [-eps, eps] is mapped linearly to [0, 1], so 0 is mid-grey and
+-eps are white and black (per channel). `save_perturbation` writes that PNG
next to the raw `.npy` array (loaded back with `np.load`, no pickle).
`save_image_grid` puts clean examples above their perturbed versions, and
`plot_pareto` draws the accuracy-robustness trade-off of shared adversarial
training (sec. 6.1, fig. 3): one curve per sharedness s, clean accuracy on x
and eps_uni(delta) on y, the non-dominated points of each s joined.
`save_segmentation_figure` shows attacks on segmentation in the manner of the
Xie thesis' figs. 2.1-2.2: per image a row of the image, the ground truth,
the clean and the adversarial predictions as VOC-coloured label maps, and the
amplified perturbation. `plot_lines`, `plot_matrix` and `plot_scatter` draw
the analyses of perturbations along adversarial training (quantities per
epoch, epoch x epoch matrices, MaxMin against MinMax).

matplotlib runs on the Agg backend, so nothing here needs a display.
"""

import os
from typing import Iterable, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from advjax.data.segmentation import colorize  # noqa: E402


def _ensure_dir(path: str) -> None:
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)


def _to_uint8(image: np.ndarray) -> np.ndarray:
  """[H, W, C] in [0, 1] -> uint8 [H, W] (grey) or [H, W, 3]."""
  image = np.clip(np.asarray(image, np.float32), 0.0, 1.0)
  if image.ndim == 3 and image.shape[-1] == 1:
    image = image[..., 0]
  return np.round(image * 255.0).astype(np.uint8)


def amplify(perturbation: np.ndarray, eps: float | None = None, factor: float | None = None) -> np.ndarray:
  """Maps perturbations to viewable images in [0, 1] centred on grey.

  Args:
    perturbation: [..., H, W, C] perturbation(s) on the [0, 1] image scale.
    eps: show [-eps, eps] (the [0, 1] scale) as [0, 1]. Default (and for a
      non-positive eps): each perturbation's own max |perturbation|, so its
      extremes reach 0 or 1.
    factor: instead, 0.5 + factor * perturbation (the universality paper's
      "amplified by a factor of 10").

  Returns:
    float32 images of the shape of `perturbation` in [0, 1], 0.5 where it is 0.
  """
  perturbation = np.asarray(perturbation, np.float32)
  if factor is not None:
    return np.clip(0.5 + factor * perturbation, 0.0, 1.0)
  if eps is None or eps <= 0:
    peak = np.max(np.abs(perturbation), axis=(-3, -2, -1), keepdims=True)
    eps = np.where(peak > 0, peak, 1.0)
  return np.clip(0.5 + perturbation / (2.0 * eps), 0.0, 1.0)


def save_image(image: np.ndarray, path: str, scale: int = 1) -> None:
  """Writes one [H, W, C] image in [0, 1] as PNG, enlarged `scale` times (nearest)."""
  _ensure_dir(path)
  pixels = _to_uint8(image)
  if scale > 1:
    pixels = np.repeat(np.repeat(pixels, scale, axis=0), scale, axis=1)
  Image.fromarray(pixels).save(path, format="PNG")


def save_perturbation(perturbation: np.ndarray, path_prefix: str, eps: float | None = None,
                      scale: int = 1) -> tuple[str, str]:
  """Saves a perturbation as `<prefix>.npy` (raw) and `<prefix>.png` (amplified).

  Args:
    perturbation: [H, W, C] on the [0, 1] image scale (e.g. a universal xi).
    path_prefix: output path without extension; directories are created.
    eps: radius on the [0, 1] scale mapped to black/white; default the
      perturbation's own max |value|. Pass the attack's eps (eps_255 / 255) to
      compare perturbations of one radius on one scale.
    scale: integer enlargement of the PNG, for small images.

  Returns:
    (npy path, png path).
  """
  perturbation = np.asarray(perturbation, np.float32)
  npy_path, png_path = path_prefix + ".npy", path_prefix + ".png"
  _ensure_dir(npy_path)
  np.save(npy_path, perturbation, allow_pickle=False)
  save_image(amplify(perturbation, eps), png_path, scale)
  return npy_path, png_path


def save_image_grid(rows: Sequence[np.ndarray], path: str, scale: int = 1,
                    padding: int = 1) -> str:
  """Tiles rows of images into one PNG, e.g. clean examples over their perturbed versions.

  Args:
    rows: sequence of [N, H, W, C] arrays in [0, 1], all of one shape; row r
      of the grid shows rows[r][0..N-1]. For perturbations, pass
      `amplify(delta, eps)`.
    path: PNG path; directories are created.
    scale: integer enlargement (nearest neighbour).
    padding: white pixels between tiles.

  Returns:
    `path`.
  """
  rows = [np.asarray(r, np.float32) for r in rows]
  n, h, w, c = rows[0].shape
  if any(r.shape != rows[0].shape for r in rows):
    raise ValueError(f"save_image_grid: rows differ in shape {[r.shape for r in rows]}")
  if c not in (1, 3):
    raise ValueError(f"save_image_grid: images need 1 or 3 channels, got {c}")
  canvas = np.ones((len(rows) * (h + padding) + padding, n * (w + padding) + padding, c),
                   np.float32)
  for i, row in enumerate(rows):
    for j in range(n):
      top, left = padding + i * (h + padding), padding + j * (w + padding)
      canvas[top:top + h, left:left + w] = row[j]
  save_image(canvas, path, scale)
  return path


def pareto_front(points: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
  """The non-dominated (accuracy, eps_uni) pairs, sorted by accuracy; larger is better in both.

  Args:
    points: (clean accuracy, eps_uni) pairs.

  Returns:
    The pairs no other pair beats in both coordinates, by increasing accuracy.
  """
  front, best_eps = [], -np.inf
  for acc, eps in sorted(points, key=lambda p: (-p[0], -p[1])):
    if eps > best_eps:
      front.append((acc, eps))
      best_eps = eps
  return sorted(front)


def plot_pareto(points: Sequence[dict], path: str, *, delta: float | None = None,
                title: str | None = None) -> str:
  """Plots accuracy-robustness Pareto fronts, one curve per heap size s (fig. 3).

  Args:
    points: dicts with 'heap_size' (the sharedness s, an int, or a label such as 'ERM'),
      'clean_accuracy' (fraction or percent) and 'eps_uni' (0-255 units), one
      per trained model.
    path: PNG path; directories are created.
    delta: the delta of eps_uni(delta), for the axis label.
    title: optional figure title.

  Returns:
    `path`. All points are drawn as markers; each group's non-dominated
    points are joined by a line.
  """
  _ensure_dir(path)
  by_s: dict[object, list[tuple[float, float]]] = {}
  for p in points:
    by_s.setdefault(p["heap_size"], []).append(
        (float(p["clean_accuracy"]), float(p["eps_uni"])))
  fig, ax = plt.subplots(figsize=(5, 4), dpi=100)
  # Numbered heap sizes in order, then named groups such as "ERM".
  for s in sorted(by_s, key=lambda k: (not isinstance(k, int), k if isinstance(k, int) else 0, str(k))):
    pts = np.asarray(by_s[s])
    label = f"s = {s}" if isinstance(s, int) else str(s)
    line, = ax.plot(*zip(*pareto_front(by_s[s])), "-", label=label)
    ax.plot(pts[:, 0], pts[:, 1], "o", color=line.get_color())
  ax.set_xlabel("clean accuracy")
  ax.set_ylabel("eps_uni" + (f"(delta = {delta:g})" if delta is not None else ""))
  if title:
    ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, format="png")
  plt.close(fig)
  return path


SEGMENTATION_COLUMNS = ("image", "ground truth", "clean prediction", "adversarial prediction",
                        "perturbation")


def save_segmentation_figure(path: str, images: np.ndarray, labels: np.ndarray, clean_pred: np.ndarray,
                             adv_pred: np.ndarray, perturbation: np.ndarray, *, eps: float | None = None,
                             adv_title: str = "adversarial prediction", labels_title: str = "ground truth",
                             panel_px: int = 128, header_px: int = 24, dpi: int = 100) -> str:
  """Writes a PNG with one row per image: image, ground truth, clean / adversarial prediction, perturbation.

  Label maps are drawn in the PASCAL VOC palette (`advjax.data.segmentation.colorize`;
  ignored pixels in VOC's void colour), the perturbation amplified by `amplify`.
  The file is exactly `5 * panel_px` pixels wide and `n * panel_px + header_px`
  high: a title band, then an n x 5 grid of square panels.

  Args:
    path: PNG path; directories are created.
    images: [n, H, W, C] in [0, 1], C = 1 (grey) or 3.
    labels: [n, H, W] ground-truth maps, -1 ignored.
    clean_pred: [n, H, W] predictions on the clean images.
    adv_pred: [n, H, W] predictions on the adversarial images.
    perturbation: [n, H, W, C] on the [0, 1] scale.
    eps: radius on the [0, 1] scale mapped to black/white (an attack's eps);
      None scales each image's perturbation by its own max |value|.
    adv_title: title of the fourth column (e.g. 'PGD-10, eps 8' or 'DAG').
    labels_title: title of the second column (e.g. 'target scene' for maps
      that are a targeted attack's goal).
    panel_px: side of one panel in pixels.
    header_px: height of the title band in pixels.
    dpi: resolution used to convert pixels to matplotlib inches.

  Returns:
    `path`.
  """
  images = np.asarray(images, np.float32)
  n = images.shape[0]
  if not (images.ndim == 4 and images.shape[-1] in (1, 3)):
    raise ValueError(f"save_segmentation_figure: images must be [n, H, W, 1 or 3], got {images.shape}")
  maps = [np.asarray(m) for m in (labels, clean_pred, adv_pred)]
  if any(m.shape != images.shape[:3] for m in maps) or np.shape(perturbation) != images.shape:
    raise ValueError("save_segmentation_figure: labels, predictions and perturbation must match the images "
                     f"{images.shape}")
  _ensure_dir(path)
  columns = (SEGMENTATION_COLUMNS[0], labels_title, SEGMENTATION_COLUMNS[2], adv_title, SEGMENTATION_COLUMNS[4])
  width, height = len(columns) * panel_px, n * panel_px + header_px
  fig = plt.figure(figsize=(width / dpi, height / dpi), dpi=dpi)
  margin = 2  # pixels between panels
  for i in range(n):
    delta = np.asarray(perturbation[i], np.float32)
    tiles = (images[i], colorize(maps[0][i]), colorize(maps[1][i]), colorize(maps[2][i]), amplify(delta, eps))
    for j, tile in enumerate(tiles):
      left = (j * panel_px + margin) / width
      bottom = ((n - 1 - i) * panel_px + margin) / height
      ax = fig.add_axes((left, bottom, (panel_px - 2 * margin) / width, (panel_px - 2 * margin) / height))
      if tile.ndim == 3 and tile.shape[-1] == 1:
        ax.imshow(tile[..., 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
      else:
        ax.imshow(tile, interpolation="nearest")
      ax.set_axis_off()
  for j, title in enumerate(columns):
    fig.text((j + 0.5) * panel_px / width, 1.0 - 0.5 * header_px / height, title, ha="center", va="center",
             fontsize=8)
  fig.savefig(path, format="png", dpi=dpi)
  plt.close(fig)
  return path


def plot_lines(panels: Sequence[dict], path: str, *, columns: int | None = None,
               title: str | None = None) -> str:
  """Line plots in a grid of panels, one line per series (analyses over epochs or strengths).

  Args:
    panels: dicts with 'x' ([n] values), 'series' ({label: [n] values}; None
      and NaN values leave gaps), and optional 'title', 'xlabel', 'ylabel'
      and 'logy' (log-scaled y axis).
    path: PNG path; directories are created.
    columns: panels per row; default all in one row.
    title: optional figure title.

  Returns:
    `path`.
  """
  if not panels:
    raise ValueError("plot_lines: no panels")
  _ensure_dir(path)
  columns = columns or len(panels)
  rows = -(-len(panels) // columns)
  fig, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 3.0 * rows), dpi=100, squeeze=False)
  for ax, panel in zip(axes.flat, panels):
    for label, values in panel["series"].items():
      y = np.asarray([np.nan if v is None else v for v in values], np.float64)
      ax.plot(np.asarray(panel["x"]), y, "o-", markersize=3, label=str(label))
    if panel.get("logy"):
      ax.set_yscale("log")
    ax.set_title(panel.get("title", ""), fontsize=9)
    ax.set_xlabel(panel.get("xlabel", ""))
    ax.set_ylabel(panel.get("ylabel", ""))
    ax.grid(alpha=0.3)
    if len(panel["series"]) > 1:
      ax.legend(fontsize=6)
  for ax in list(axes.flat)[len(panels):]:
    ax.set_axis_off()
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, format="png")
  plt.close(fig)
  return path


def plot_matrix(matrix: np.ndarray, path: str, *, row_labels: Sequence | None = None,
                col_labels: Sequence | None = None, xlabel: str = "", ylabel: str = "",
                title: str | None = None, vmin: float = 0.0, vmax: float = 1.0) -> str:
  """A matrix as a heat map with its values written in the cells (percent for [0, 1] data).

  Args:
    matrix: [R, C] values.
    path: PNG path; directories are created.
    row_labels: R tick labels (default 0..R-1).
    col_labels: C tick labels (default 0..C-1).
    xlabel: column axis label.
    ylabel: row axis label.
    title: optional title.
    vmin: value of the darkest colour.
    vmax: value of the brightest colour.

  Returns:
    `path`.
  """
  matrix = np.asarray(matrix, np.float64)
  if matrix.ndim != 2:
    raise ValueError(f"plot_matrix: need a 2-D matrix, got shape {matrix.shape}")
  _ensure_dir(path)
  r, c = matrix.shape
  fig, ax = plt.subplots(figsize=(1.2 + 0.45 * c, 1.0 + 0.4 * r), dpi=100)
  image = ax.imshow(matrix, vmin=vmin, vmax=vmax, cmap="viridis")
  if r * c <= 400:
    for i in range(r):
      for j in range(c):
        value = matrix[i, j]
        text = f"{100 * value:.0f}" if vmax <= 1.0 else f"{value:.2g}"
        ax.text(j, i, text, ha="center", va="center", fontsize=6,
                color="white" if value < (vmin + vmax) / 2 else "black")
  ax.set_xticks(range(c), [str(v) for v in (col_labels if col_labels is not None else range(c))], fontsize=7)
  ax.set_yticks(range(r), [str(v) for v in (row_labels if row_labels is not None else range(r))], fontsize=7)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  if title:
    ax.set_title(title, fontsize=9)
  fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
  fig.tight_layout()
  fig.savefig(path, format="png")
  plt.close(fig)
  return path


def plot_scatter(x: np.ndarray, y: np.ndarray, path: str, *, groups: np.ndarray | None = None,
                 group_names: Sequence[str] | None = None, xlabel: str = "", ylabel: str = "",
                 title: str | None = None, log: bool = False, diagonal: bool = False,
                 limits: tuple[float, float] | None = None) -> str:
  """A scatter plot, coloured by group (e.g. MaxMin against MinMax, appendix B).

  Args:
    x: [N] x coordinates.
    y: [N] y coordinates.
    path: PNG path; directories are created.
    groups: optional [N] int group of each point, indexing `group_names`.
    group_names: legend labels of the groups.
    xlabel: x axis label.
    ylabel: y axis label.
    title: optional title.
    log: log-scaled axes; non-positive points are left out.
    diagonal: draw the line y = x.
    limits: (low, high) of both axes; default matplotlib's.

  Returns:
    `path`.
  """
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  groups = np.zeros(x.shape, np.int64) if groups is None else np.asarray(groups)
  keep = (x > 0) & (y > 0) if log else np.ones(x.shape, bool)
  _ensure_dir(path)
  fig, ax = plt.subplots(figsize=(4.2, 4.0), dpi=100)
  for g in np.unique(groups):
    sel = keep & (groups == g)
    name = group_names[g] if group_names is not None else None
    ax.scatter(x[sel], y[sel], s=8, alpha=0.6, label=f"{name} ({int(np.sum(groups == g))})" if name else None)
  if log:
    ax.set_xscale("log")
    ax.set_yscale("log")
  if limits is not None:
    ax.set_xlim(*limits)
    ax.set_ylim(*limits)
  if diagonal:
    low, high = ax.get_xlim()
    ax.plot([low, high], [low, high], "k--", linewidth=0.8)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  if title:
    ax.set_title(title, fontsize=9)
  if group_names is not None:
    ax.legend(fontsize=7)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, format="png")
  plt.close(fig)
  return path
