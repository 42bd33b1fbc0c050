"""An analytic FLOP count for MFU: 6 FLOPs per parameter per token (forward 2, backward 4; Kaplan et al. 2020,
"Scaling Laws for Neural Language Models", section 2.1) for the text model over every sequence position, plus
its attention (QK^T and AV, forward and backward: 6 * 2 * layers * width * sequence length per token for a full
mask, halved here for the causal mask: only its lower triangle is work, and causal attention kernels skip the
rest), plus 6 FLOPs per vision parameter per image patch. Beside it, `step_flops_6n` is the plain 6 N FLOPs per
token (N: every parameter but the input embedding), the figure most reports quote, logged as `mfu_6n`. The
resampler runs on few latents and is counted with the vision side per patch (an overestimate of well under 1% at
Idefics2's sizes). With frozen backbones the real backward is cheaper (no weight gradients): MFU is then an upper
bound, as in most reports.
"""

from __future__ import annotations

from dataclasses import dataclass

# Dense bf16 peaks from the vendors' datasheets (no sparsity), TFLOP/s.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 70.0, "L4": 121.0}


@dataclass
class FlopModel:
    text_params: int  # text model + LM head, without the input embedding (a lookup, not a matmul)
    vision_params: int  # vision tower + connector
    text_layers: int
    text_width: int
    patch_size: int

    def step_flops(self, sequences: list[int], pixels: int) -> float:
        """FLOPs of one training step over rows of these real lengths (padding is not useful work) and images with
        this many real pixels."""
        tokens = sum(sequences)
        attention = sum(6 * self.text_layers * self.text_width * n * n for n in sequences)  # causal: half of 12
        return 6 * self.text_params * tokens + attention + 6 * self.vision_params * pixels / self.patch_size ** 2

    def step_flops_6n(self, sequences: list[int]) -> float:
        """6 N per real token, N = text + vision + connector parameters (no attention, no per-patch count)."""
        return 6 * (self.text_params + self.vision_params) * sum(sequences)


def flop_model(model) -> FlopModel:
    """Counts a (possibly peft-wrapped) Idefics2's parameters by part."""
    core = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = core.config
    embedding = core.get_input_embeddings().weight.numel()
    text = sum(p.numel() for p in core.model.text_model.parameters()) - embedding
    text += core.lm_head.weight.numel()
    vision = sum(p.numel() for p in core.model.vision_model.parameters())
    vision += sum(p.numel() for p in core.model.connector.parameters())
    return FlopModel(text, vision, config.text_config.num_hidden_layers, config.text_config.hidden_size,
                     config.vision_config.patch_size)


def peak_flops(device_name: str, override_tflops: float | None) -> float | None:
    """The accelerator's peak, FLOP/s: the flag, else looked up by name; None when unknown (no MFU logged)."""
    if override_tflops:
        return override_tflops * 1e12
    for name, tflops in PEAK_BF16_TFLOPS.items():
        if name in device_name:
            return tflops * 1e12
    return None
