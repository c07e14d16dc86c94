"""Grad-CAM: where in the radiograph the fold models look when they score a finding.

    python -m cxrlt.explain --run runs/effv2s_768 --image X.jpg [--class Nodule "Pleural Effusion"] --out explain/

For each requested finding (default: the --top most probable), a heatmap over the image (PNG per
finding, an overview PNG, the raw maps in maps.npz, probabilities in gradcam.json).

Method (Selvaraju et al. 2017; seed 000 used it, G26): the target layer is the last feature map
before global average pooling, found as the input of the model's `gap` layer (with `model.head: csra` or
`ml_decoder`, of its `head_dropout` layer: the same backbone output), which works for every backbone: EfficientNetV2's `top_activation` and, for ConvNeXt in Keras 3.15, the final
LayerNormalization that `include_top=False` ends with (its auto-generated name varies, so it is not
looked up by name). The class score is the **logit** (the input of the final sigmoid): the map from
the probability differs only by the positive factor p(1 - p) per image and class, which the [0, 1]
normalisation removes, but that factor underflows to 0 for confident predictions. Channel weights
are the spatially averaged gradients; the map is ReLU(sum of weighted channels), resized to the
image, divided by its maximum. An all-zero map is a result, not a failure: no region raises the
score (usual for a finding the model thinks absent); the PNG says so. With the csra and ml_decoder heads
Grad-CAM is computed the same way (gradients of the class logit through the head); it no longer equals CAM
(which only a GAP + dense head has), and for ml_decoder, whose cross-attention mixes positions, the
spatially averaged gradient is a coarser guide to where the evidence is. Each fold model's map is computed on the image as predict sees it
(decoded, resized per input.resize, no TTA) and the maps are averaged with equal weight, then
rescaled to [0, 1]; probabilities are the fold mean. A backbone downsamples by 32, so a model
trained at 64 px has a 2 x 2 map and one at 32 px a single cell that cannot localise anything
(a warning says so; --layer picks an earlier, finer layer).
"""

from __future__ import annotations

import difflib
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..utils import atomic, cli
from ..runtime import runs

log = logging.getLogger("cxrlt.explain")


class ExplainError(cli.UserError):
    """A request Grad-CAM cannot serve; the message says what to change."""


@dataclass
class Explanation:
    image_path: Path
    classes: list[str]          # the explained findings, in the order of `maps`
    probabilities: dict         # every class -> mean probability over the fold models
    maps: np.ndarray            # [len(classes), size, size] in [0, 1], in the model's input frame
    layer: str
    feature_shape: tuple        # (h, w) of the target feature map
    folds: list[int]


def feature_layer(model, name: str | None = None):
    """The target layer: `name` if given, else the one whose output the `gap` pooling layer reads."""
    if name:
        try:
            return model.get_layer(name)
        except ValueError:
            close = difflib.get_close_matches(name, [layer.name for layer in model.layers], n=3)
            raise ExplainError(f"the model has no layer {name!r}" + (f"; close: {close}" if close else "")) from None
    try:
        found = model.get_layer("gap").input._keras_history[0]
    except ValueError:
        try:  # model.head csra / ml_decoder: feature map -> "head_dropout" -> head layer "logits"
            found = model.get_layer("head_dropout").input._keras_history[0]
        except ValueError:
            raise ExplainError(f"model {model.name} has neither a 'gap' pooling layer nor a 'head_dropout' layer before "
                               "its head; is it a cxrlt model? Name the target layer with --layer") from None
    if found.name == "head_batchnorm":  # model.head_norm batchnorm: the backbone's feature map is the norm's input
        found = found.input._keras_history[0]
    return found


def gradcam_model(model, layer=None):
    """image -> (target feature map, class logits); logits = the input of the final sigmoid when there is one."""
    import keras

    target = feature_layer(model, layer)
    try:
        scores = model.get_layer("logits").output
    except ValueError:
        scores = model.outputs[0]  # not a cxrlt model: fall back to its output, whatever it is
        log.warning("model %s has no 'logits' layer; Grad-CAM uses its output %s", model.name, scores.shape)
    if len(target.output.shape) != 4:
        raise ExplainError(f"layer {target.name} gives {tuple(target.output.shape)}, not a [batch, h, w, channels] "
                           "feature map; pick a convolutional layer with --layer")
    return keras.Model(model.inputs[0], [target.output, scores]), target.name


class GradCam:
    """Grad-CAM of one model: one forward pass, one backward pass per requested class.

    Runs eagerly (tracing EfficientNetV2's gradient graph costs more than a few eager passes), except
    for models with grouped convolutions: Keras builds ConvNeXt's depthwise convolutions as grouped
    Conv2D, which its TF backend runs through XLA and, eagerly, recompiles on every call (12 s per
    96 px image on a loaded 2-core CPU); traced once per model, each class then costs 0.3 s.
    """

    def __init__(self, model, layer: str | None = None):
        import tensorflow as tf

        self.grad_model, self.layer = gradcam_model(model, layer)
        self.feature_shape = tuple(int(d) for d in self.grad_model.outputs[0].shape[1:3])
        self._one, self.predict = None, model
        if has_grouped_conv(model):
            spec = tf.TensorSpec([None, *model.inputs[0].shape[1:]], tf.float32)
            self._one = tf.function(self._one_class, input_signature=[spec, tf.TensorSpec([], tf.int32)])
            self.predict = tf.function(lambda images: model(images, training=False), input_signature=[spec])

    def _one_class(self, images, c):
        import tensorflow as tf

        with tf.GradientTape() as tape:
            features, scores = self.grad_model(images, training=False)
            score = scores[:, c]
        return _weighted(tape.gradient(score, features), features)

    def raw(self, images, class_indices) -> list:
        """Un-normalised maps at the feature resolution, [B, h, w] per class."""
        import tensorflow as tf

        if self._one is not None:
            return [self._one(images, tf.constant(int(c), tf.int32)) for c in class_indices]
        with tf.GradientTape(persistent=True) as tape:
            features, scores = self.grad_model(images, training=False)
            picked = [scores[:, int(c)] for c in class_indices]
        maps = [_weighted(tape.gradient(score, features), features) for score in picked]
        del tape
        return maps

    def __call__(self, images, class_indices) -> np.ndarray:
        """Maps [len(class_indices), batch, H, W] in [0, 1] at the input size (H, W)."""
        import tensorflow as tf

        images = tf.convert_to_tensor(np.asarray(images, dtype=np.float32))
        out = []
        for cam in self.raw(images, class_indices):
            cam = tf.image.resize(cam[..., None], tf.shape(images)[1:3], method="bilinear")[..., 0]
            peak = tf.reduce_max(cam, axis=(1, 2), keepdims=True)
            out.append(tf.math.divide_no_nan(cam, peak).numpy())
        return np.clip(np.stack(out), 0.0, 1.0) if out else np.zeros((0, *images.shape[:3]), np.float32)


def _weighted(grads, features):
    """ReLU(sum_k alpha_k A_k), alpha_k = the spatial mean of d score / d A_k."""
    import tensorflow as tf

    weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
    return tf.nn.relu(tf.reduce_sum(weights * features, axis=-1))


def has_grouped_conv(model) -> bool:
    stack = list(model.layers)
    while stack:
        layer = stack.pop()
        if getattr(layer, "groups", 1) > 1:
            return True
        stack.extend(getattr(layer, "layers", []))
    return False


def gradcam(model, images, class_indices, *, layer: str | None = None) -> np.ndarray:
    """Grad-CAM maps [len(class_indices), batch, H, W] in [0, 1] at the model's input size (H, W)."""
    return GradCam(model, layer)(images, class_indices)


def resolve_classes(requested, probabilities: np.ndarray, class_names, top: int) -> list[int]:
    """Indices of the requested findings (did-you-mean on a typo), or of the `top` most probable."""
    names = list(class_names)
    if not requested:
        return [int(i) for i in np.argsort(-probabilities, kind="stable")[:top]]
    lower = {n.lower(): i for i, n in enumerate(names)}
    out = []
    for name in requested:
        if name.lower() not in lower:
            close = difflib.get_close_matches(name, names, n=3)
            raise ExplainError(f"unknown finding {name!r}" + (f"; did you mean {close}?" if close else "")
                               + f" The run's classes: {', '.join(names)}")
        out.append(lower[name.lower()])
    return out


@dataclass
class FoldModels:
    """The run's fold models, loaded once, each wrapped in GradCam (several images reuse them)."""
    run: runs.Run
    folds: list[int]
    cams: list              # GradCam per fold model (cam.predict: image -> probabilities)
    layer: str


def load_fold_models(run: runs.Run, folds=None, layer: str | None = None) -> FoldModels:
    from ..model import models
    from ..utils.progress import Progress

    if run.is_fused:  # its fold models take study stacks of feature maps, not images
        raise runs.RunError(f"{run.root} is a fused run (python -m cxrlt.fuse); Grad-CAM runs on the image models of "
                            f"its source run: {json.loads(run.fusion_json.read_text()).get('source')}")
    done = run.finished_folds()
    folds = done if folds is None else list(folds)
    missing = [k for k in folds if k not in done]
    if not folds or missing:
        raise runs.RunError(f"{run.root}: fold(s) {missing or '(none)'} not finished; finished: {done or 'none'}")
    cams = []
    with Progress(len(folds), f"{run.root.name}: loading", unit="fold model") as bar:
        for k in folds:
            cams.append(GradCam(models.load(run.model_path(k), num_classes=len(run.classes())), layer))
            bar.add(1)
    return FoldModels(run, folds, cams, cams[0].layer)


def explain_image(fold_models: FoldModels, image_path, requested=None, *, top: int = 3) -> Explanation:
    """Grad-CAM of one image, averaged over the fold models with equal weight."""
    import tensorflow as tf

    from ..data import pipeline

    image_path = Path(image_path)
    if not image_path.is_file():
        raise FileNotFoundError(f"image {image_path} does not exist")
    run = fold_models.run
    cfg, class_names = run.config(), list(run.classes())
    try:
        image = pipeline.decode_image(tf.constant(str(image_path)), cfg["input"]["size"], cfg["input"]["resize"],
                                       intensity=cfg["input"].get("intensity", "full_range"),
                                       dicom=pipeline.dicom_setting([str(image_path)], cfg))
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as err:
        raise ExplainError(f"{image_path}: cannot decode the image ({err.message.splitlines()[0][:200]}); "
                           "JPEG, PNG or DICOM expected") from None
    batch = image[None].numpy()
    probability = np.mean([np.asarray(cam.predict(batch), dtype=np.float64)[0] for cam in fold_models.cams], axis=0)
    chosen = resolve_classes(requested, probability, class_names, top)
    maps = np.mean([cam(batch, chosen)[:, 0] for cam in fold_models.cams], axis=0)
    peak = maps.max(axis=(1, 2), keepdims=True)
    maps = np.divide(maps, peak, out=np.zeros_like(maps), where=peak > 0)
    feature_shape = fold_models.cams[0].feature_shape
    if feature_shape == (1, 1):
        log.warning("the target layer %s is a 1 x 1 map at %d px: Grad-CAM cannot localise (the heatmap is flat). "
                    "Train at a larger --size, or pass --layer with an earlier layer", fold_models.layer,
                    cfg["input"]["size"])
    for name, m in zip([class_names[i] for i in chosen], maps):
        if not m.any():
            log.info("%s: empty Grad-CAM map for %s: no region of the image raises its score in any fold model "
                     "(common when the finding is predicted unlikely)", image_path.name, name)
    return Explanation(image_path=image_path, classes=[class_names[i] for i in chosen],
                       probabilities={c: float(p) for c, p in zip(class_names, probability)},
                       maps=maps.astype(np.float32), layer=fold_models.layer, feature_shape=feature_shape,
                       folds=fold_models.folds)


def to_original_frame(cam: np.ndarray, width: int, height: int, resize: str) -> np.ndarray:
    """Map a square model-frame map onto the original image (undoing the stretch, or cropping the letterbox)."""
    from PIL import Image

    size = cam.shape[0]
    if resize == "letterbox":
        scale = size / max(width, height)
        w, h = max(1, round(width * scale)), max(1, round(height * scale))
        top, left = (size - h) // 2, (size - w) // 2
        cam = cam[top:top + h, left:left + w]
    resized = Image.fromarray(cam.astype(np.float32), mode="F").resize((width, height), Image.BILINEAR)
    return np.clip(np.asarray(resized), 0.0, 1.0)


def render(explanation: Explanation, out_dir: Path, resize: str = "stretch", max_side: int = 768,
           dicom_window: str = "stored") -> list[Path]:
    """One overlay PNG per finding plus an overview; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    from ..data import dicom

    grey = dicom.grey_picture(explanation.image_path, dicom_window)
    scale = min(1.0, max_side / max(grey.size))
    grey = grey.resize((max(1, round(grey.width * scale)), max(1, round(grey.height * scale))), Image.BILINEAR)
    pixels = np.asarray(grey)
    stem = explanation.image_path.stem
    n_folds = len(explanation.folds)
    overlays = [to_original_frame(m, grey.width, grey.height, resize) for m in explanation.maps]
    written = []

    def draw(ax, heat, title):
        if not heat.any():
            title += "\n(empty map: no region raises this score)"
        ax.imshow(pixels, cmap="gray", vmin=0, vmax=255)
        shown = ax.imshow(heat, cmap="jet", vmin=0, vmax=1, alpha=0.55 * heat)  # clear where the map is 0
        ax.set_title(title, fontsize=10)
        ax.set_xticks([]), ax.set_yticks([])
        return shown

    for name, heat in zip(explanation.classes, overlays):
        fig, ax = plt.subplots(figsize=(6.6, 5.6 * grey.height / grey.width + 0.9), layout="constrained")
        shown = draw(ax, heat, f"{name}: probability {explanation.probabilities[name]:.2f}")
        bar = fig.colorbar(matplotlib.cm.ScalarMappable(cmap="jet", norm=shown.norm), ax=ax, fraction=0.046, pad=0.02)
        bar.set_label("Grad-CAM relevance (0 = none, 1 = strongest)")
        fig.supxlabel(f"{stem} | mean of {n_folds} fold model(s) | layer {explanation.layer} "
                 f"({explanation.feature_shape[0]}x{explanation.feature_shape[1]} map)", fontsize=7, color="0.3")
        path = out_dir / f"{stem}_{_slug(name)}.png"
        _save(fig, path)
        written.append(path)

    cols = len(explanation.classes) + 1
    fig, axes = plt.subplots(1, cols, figsize=(3.2 * cols, 3.2 * grey.height / grey.width + 1.1), squeeze=False,
                             layout="constrained")
    axes[0][0].imshow(pixels, cmap="gray", vmin=0, vmax=255)
    axes[0][0].set_title("image", fontsize=10)
    axes[0][0].set_xticks([]), axes[0][0].set_yticks([])
    for ax, name, heat in zip(axes[0][1:], explanation.classes, overlays):
        draw(ax, heat, f"{name}\np = {explanation.probabilities[name]:.2f}")
    fig.suptitle(f"Grad-CAM, {stem} (mean of {n_folds} fold model(s); red = strongest evidence)", fontsize=10)
    path = out_dir / f"{stem}_gradcam.png"
    _save(fig, path)
    written.append(path)
    return written


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in name).strip("_").lower()


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    with atomic.atomic_path(path, suffix=".tmp.png") as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def write_outputs(explanation: Explanation, out_dir: Path, resize: str, dicom_window: str = "stored") -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    files = render(explanation, out_dir, resize, dicom_window=dicom_window)
    stem = explanation.image_path.stem
    with atomic.atomic_path(out_dir / f"{stem}_maps.npz", suffix=".tmp.npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, maps=explanation.maps, classes=np.array(explanation.classes))
    info = {"image": str(explanation.image_path), "classes": explanation.classes, "layer": explanation.layer,
            "feature_map": list(explanation.feature_shape), "folds": explanation.folds,
            "score": "logit (input of the final sigmoid)", "probabilities": explanation.probabilities,
            "files": [p.name for p in files] + [f"{stem}_maps.npz"]}
    atomic.write_json(out_dir / f"{stem}_gradcam.json", info)
    return files


def main(argv=None) -> int:
    parser = cli.parser("python -m cxrlt.explain", __doc__)
    parser.add_argument("--run", required=True, type=Path, help="run directory (runs/<name>)")
    parser.add_argument("--image", required=True, nargs="+", type=Path, help="radiograph(s): JPEG, PNG or DICOM")
    parser.add_argument("--class", dest="classes", nargs="+", metavar="FINDING",
                        help="findings to explain (default: the --top most probable)")
    parser.add_argument("--top", type=int, default=3, help="how many of the most probable findings (default 3)")
    parser.add_argument("--fold", type=int, nargs="+", help="fold indices whose models to average, a list (default: every finished fold)")
    parser.add_argument("--layer", help="target layer name (default: the last feature map before pooling)")
    parser.add_argument("--out", type=Path, default=Path("explain"), help="folder the heat maps are written to")
    cli.add_common(parser)
    args = parser.parse_args(argv)
    cli.setup(args)
    with cli.errors():
        run = runs.Run(args.run)
        resize = run.config()["input"]["resize"]
        missing = [str(p) for p in args.image if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"image(s) not found: {', '.join(missing)}")
        if args.classes:  # a typo fails now, not after loading every fold model
            resolve_classes(args.classes, np.zeros(len(run.classes())), run.classes(), args.top)
        fold_models = load_fold_models(run, args.fold, args.layer)
        for image in args.image:
            explanation = explain_image(fold_models, image, args.classes, top=args.top)
            files = write_outputs(explanation, args.out, resize, run.config()["input"].get("dicom_window", "stored"))
            shown = ", ".join(f"{c} {explanation.probabilities[c]:.2f}" for c in explanation.classes)
            print(f"{image}: {shown} -> {', '.join(str(f) for f in files)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
