"""Convert LAION's CLIP-based NSFW detector head (published as a Keras model) to the safetensors that
`filters.nsfw.ClipNsfwScorer` loads.

    # in a separate environment with TensorFlow (and autokeras, which the published model was saved with):
    pip install tensorflow autokeras safetensors torch
    python scripts/convert_laion_nsfw_head.py clip_autokeras_binary_nsfw/ laion_nsfw_head.safetensors

The published model (LAION-AI's CLIP-based-NSFW-Detector, the ViT-L/14 variant) is a Keras model whose
weights, in order, are the input normalisation (mean, variance, count) and four dense layers
(768 -> 64 -> 512 -> 256 -> 1, facts.md). Keras stores a dense kernel as (in, out); torch's Linear wants
(out, in). The script checks every shape against `ClipNsfwHead` and refuses anything else.

Not verified here: this machine has no network, so the published weights could not be fetched and this script
has only been checked against the head's shapes, not run on the real file. Check a few images against LAION's
`punsafe` column before relying on it.
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from safetensors.torch import save_file

from filters.nsfw import ClipNsfwHead


def keras_weights(path: str) -> list[np.ndarray]:
    try:
        import tensorflow as tf
    except ImportError:
        sys.exit("error: TensorFlow is needed to read the Keras model: pip install tensorflow autokeras")
    try:
        import autokeras  # noqa: F401 - registers the custom objects the saved model refers to
    except ImportError:
        pass
    return tf.keras.models.load_model(path, compile=False).get_weights()


def to_state_dict(weights: list[np.ndarray]) -> dict[str, torch.Tensor]:
    head = ClipNsfwHead(768)
    mean, variance = weights[0].reshape(-1), weights[1].reshape(-1)
    dense = weights[2:]
    if dense and np.ndim(dense[0]) == 0:  # the normalisation's sample count
        dense = dense[1:]
    linears = [m for m in head.layers if isinstance(m, torch.nn.Linear)]
    if len(dense) != 2 * len(linears):
        raise ValueError(f"expected {2 * len(linears)} dense arrays, found {len(dense)}")
    state = {"mean": torch.tensor(mean, dtype=torch.float32), "variance": torch.tensor(variance, dtype=torch.float32)}
    for index, (linear, kernel, bias) in enumerate(zip(linears, dense[0::2], dense[1::2])):
        position = list(head.layers).index(linear)
        if kernel.T.shape != tuple(linear.weight.shape) or bias.shape != tuple(linear.bias.shape):
            raise ValueError(f"dense layer {index}: kernel {kernel.shape}, bias {bias.shape} do not fit {linear}")
        state[f"layers.{position}.weight"] = torch.tensor(kernel.T.copy(), dtype=torch.float32)
        state[f"layers.{position}.bias"] = torch.tensor(bias, dtype=torch.float32)
    head.load_state_dict(state)  # refuses missing or unexpected keys
    return state


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    save_file(to_state_dict(keras_weights(sys.argv[1])), sys.argv[2])
    print(f"wrote {sys.argv[2]}")


if __name__ == "__main__":
    main()
