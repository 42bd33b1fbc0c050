"""scripts/convert_laion_nsfw_head.py on weights laid out as LAION's published autokeras model lays them out."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from filters.nsfw import ClipNsfwHead

SIZES = [768, 64, 512, 256, 1]


def _converter():
    spec = importlib.util.spec_from_file_location("convert", "scripts/convert_laion_nsfw_head.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def published_layers(rng: np.random.Generator) -> list[tuple[str, list[np.ndarray]]]:
    """The model's layers in order with their get_weights(): the categorical encoding's five string-lookup
    vocabularies come first (a port reading the flat list finds the normalisation at positions 5 and 6), then the
    normalisation's mean, variance and sample count, then the dense kernels (in, out) and biases."""
    vocabularies = [np.array([b"[UNK]", f"{v:.6f}".encode()], dtype=object) for v in rng.normal(size=5)]
    layers = [("InputLayer", []), ("MultiCategoryEncoding", vocabularies),
              ("Normalization", [rng.normal(size=768).astype("f4"), rng.uniform(0.5, 2, 768).astype("f4"),
                                 np.array(1000, dtype=np.int64)])]
    for number, (n_in, n_out) in enumerate(zip(SIZES, SIZES[1:])):
        layers.append(("Dense", [rng.normal(0, 0.05, (n_in, n_out)).astype("f4"),
                                 rng.normal(0, 0.05, n_out).astype("f4")]))
        layers.append(("ReLU", []) if number < 3 else ("Activation", []))
    return layers


def test_conversion_maps_by_layer_and_computes_what_keras_does():
    rng = np.random.default_rng(0)
    layers = published_layers(rng)
    head = ClipNsfwHead(768)
    head.load_state_dict(_converter().to_state_dict(layers))
    (mean, variance, _), dense = layers[2][1], [w for kind, w in layers if kind == "Dense"]
    x = rng.normal(size=(3, 768)).astype("f4")
    h = (x / np.linalg.norm(x, axis=1, keepdims=True) - mean) / np.sqrt(variance + 1e-7)
    for k, (kernel, bias) in enumerate(dense):
        h = h @ kernel + bias
        h = np.maximum(h, 0) if k < 3 else h
    with torch.no_grad():
        assert head(torch.tensor(x)).numpy() == pytest.approx(h, rel=1e-4, abs=1e-5)


def test_conversion_refuses_another_graph():
    layers = [layer for layer in published_layers(np.random.default_rng(1)) if layer[0] != "Normalization"]
    with pytest.raises(ValueError, match="expected 1 Normalization and 4 Dense layers, found 0 and 4"):
        _converter().to_state_dict(layers)
