"""Convert LAION's CLIP-based NSFW detector head (published as an autokeras model) to the safetensors that
`filters.nsfw.ClipNsfwScorer` loads, and check the result against the Keras model's own predictions.

    # a separate environment of the TensorFlow 2.8 era: the model was saved with Keras 2.8 and autokeras 1.0.20
    # (Keras 3 cannot load it); e.g. Python 3.9 with
    pip install "tensorflow==2.8.*" "autokeras==1.0.20" safetensors torch numpy
    python scripts/convert_laion_nsfw_head.py clip_autokeras_binary_nsfw/ laion_nsfw_head.safetensors \\
        [--check EMBEDDINGS.npy]

The model (LAION-AI/CLIP-based-NSFW-Detector, the ViT-L/14 variant, clip_autokeras_binary_nsfw.zip) is an
autokeras graph: input (768) -> MultiCategoryEncoding -> Normalization -> Dense 64 -> ReLU -> Dense 512 -> ReLU ->
Dense 256 -> ReLU -> Dense 1 -> sigmoid. The encoding layer holds one string-lookup vocabulary per column it
treats as categorical, and those arrays come first in `model.get_weights()` (ports that read the normalisation
at positions 5 and 6 of that list rely on it), so weights are taken layer by layer: the normalisation layer's
mean and variance, then the four dense layers' kernel and bias in order. Keras stores a dense kernel as
(in, out); torch's Linear wants (out, in). Every shape is checked against `ClipNsfwHead`.

The torch head skips the categorical encoding (as other ports do), so its scores can differ from Keras' on the
encoded columns. `--check EMBEDDINGS.npy` (CLIP ViT-L/14 image embeddings, shape (n, 768), e.g. of a few LAION
images) runs both on the same L2-normalised embeddings and prints the largest difference in score; compare with
LAION's `punsafe` column too before relying on the converted head.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch
from safetensors.torch import save_file

from filters.nsfw_head import ClipNsfwHead

Layers = list[tuple[str, list[np.ndarray]]]  # (Keras class name, that layer's get_weights()), in model order


def load_keras_model(path: str):
    try:
        import tensorflow as tf
    except ImportError:
        sys.exit("error: TensorFlow is needed to read the Keras model: pip install 'tensorflow==2.8.*' "
                 "'autokeras==1.0.20'")
    try:
        import autokeras
    except ImportError:
        sys.exit("error: autokeras 1.0.20 is needed: the model's encoding layer is an autokeras custom layer")
    return tf.keras.models.load_model(path, custom_objects=autokeras.CUSTOM_OBJECTS, compile=False)


def keras_layers(model) -> Layers:
    return [(type(layer).__name__, layer.get_weights()) for layer in model.layers]


def to_state_dict(layers: Layers) -> dict[str, torch.Tensor]:
    """Map the normalisation layer and the dense layers, by layer; refuse a graph of another shape."""
    head = ClipNsfwHead(768)
    norms = [weights for kind, weights in layers if kind == "Normalization"]
    dense = [weights for kind, weights in layers if kind == "Dense"]
    linears = [m for m in head.layers if isinstance(m, torch.nn.Linear)]
    if len(norms) != 1 or len(dense) != len(linears):
        raise ValueError(f"expected 1 Normalization and {len(linears)} Dense layers, found {len(norms)} and "
                         f"{len(dense)} (layers: {[kind for kind, _ in layers]})")
    mean, variance = (np.asarray(w, dtype=np.float32).reshape(-1) for w in norms[0][:2])
    state = {"mean": torch.from_numpy(mean), "variance": torch.from_numpy(variance)}
    for index, (linear, weights) in enumerate(zip(linears, dense)):
        kernel, bias = weights
        if kernel.T.shape != tuple(linear.weight.shape) or bias.shape != tuple(linear.bias.shape):
            raise ValueError(f"dense layer {index}: kernel {kernel.shape}, bias {bias.shape} do not fit {linear}")
        position = list(head.layers).index(linear)
        state[f"layers.{position}.weight"] = torch.tensor(kernel.T.copy(), dtype=torch.float32)
        state[f"layers.{position}.bias"] = torch.tensor(bias, dtype=torch.float32)
    head.load_state_dict(state)  # refuses missing or unexpected keys and wrong shapes
    return state


def check(model, state: dict[str, torch.Tensor], embeddings: np.ndarray) -> float:
    """Largest |score difference| between the Keras model and the converted head on the same embeddings."""
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    keras_scores = np.asarray(model.predict(unit.astype(np.float32), verbose=0)).reshape(-1)
    head = ClipNsfwHead(embeddings.shape[1])
    head.load_state_dict(state)
    with torch.no_grad():
        ours = torch.sigmoid(head(torch.from_numpy(embeddings.astype(np.float32)))).numpy().reshape(-1)
    return float(np.abs(keras_scores - ours).max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="the unzipped clip_autokeras_binary_nsfw folder")
    parser.add_argument("output", help="safetensors file to write")
    parser.add_argument("--check", metavar="EMBEDDINGS.npy", help="compare scores with the Keras model's")
    args = parser.parse_args()
    model = load_keras_model(args.model)
    state = to_state_dict(keras_layers(model))
    save_file(state, args.output)
    print(f"wrote {args.output}")
    if args.check:
        print(f"largest score difference against the Keras model: {check(model, state, np.load(args.check)):.2e}")


if __name__ == "__main__":
    main()
