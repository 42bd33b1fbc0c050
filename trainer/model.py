"""The model: transformers' Idefics2 classes, built from a released checkpoint, from pretrained backbones with a new
connector (the paper's recipe), or from scratch (the tiny test model); then adapters and the parameter groups.

Idefics2 = SigLIP vision encoder -> connector (SwiGLU projection to the text width, then a perceiver resampler
that pools each image to `latents` vectors) -> Mistral text model, the image vectors replacing the `<image>`
tokens of the prompt (paper section 2.3).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (AutoConfig, AutoModelForCausalLM, AutoTokenizer, Idefics2Config,
                          Idefics2ForConditionalGeneration, Idefics2Processor, MistralConfig, SiglipVisionConfig,
                          SiglipVisionModel)
from transformers.models.idefics2.image_processing_pil_idefics2 import Idefics2ImageProcessorPil

from trainer.config import ConfigError, ModelConfig, TrainConfig

REPO = Path(__file__).resolve().parent.parent
# The backbones' linear layers that get adapters: attention and MLP of SigLIP (fc1/fc2, out_proj) and Mistral.
# The connector is excluded by the path (it is trained fully). Same target set as the public Idefics2 LoRA
# fine-tuning examples, with the vision tower added since the paper adapts both backbones (section 2.3).
ADAPTER_TARGETS = (r".*(vision_model|text_model)\..*"
                   r"(q_proj|k_proj|v_proj|o_proj|out_proj|gate_proj|up_proj|down_proj|fc1|fc2)$")


def _local_or_hub(name: str) -> str:
    """A path relative to the repository (the shipped tiny tokenizer) works from any working folder."""
    return str(REPO / name) if not Path(name).exists() and (REPO / name).exists() else name


def build_processor(cfg: ModelConfig) -> Idefics2Processor:
    """The Idefics2 processor: our tokenizer (it adds `<fake_token_around_image>`, `<image>` and
    `<end_of_utterance>` when missing) and the image processor with the run's size bounds and splitting."""
    size = {"longest_edge": cfg.image_longest_edge, "shortest_edge": cfg.image_shortest_edge}
    if cfg.checkpoint:
        processor = Idefics2Processor.from_pretrained(cfg.checkpoint)
        processor.image_processor.size = size
        processor.image_processor.do_image_splitting = cfg.image_splitting
        processor.image_processor.do_resize = False  # `collate.open_image` fits the bounds, aspect ratio kept
        return processor
    tokenizer = AutoTokenizer.from_pretrained(_local_or_hub(cfg.tokenizer))
    if tokenizer.pad_token is None:  # Mistral has none; Idefics2 pads with id 0 (its config's pad_token_id)
        tokenizer.pad_token = tokenizer.convert_ids_to_tokens(0)
    # do_resize=False: `collate.open_image` already fits the images to the bounds with the aspect ratio kept; the
    # processor's own resize raises each short side to `shortest_edge` on its own, which stretches long images
    images = Idefics2ImageProcessorPil(size=size, do_image_splitting=cfg.image_splitting, do_resize=False)
    return Idefics2Processor(image_processor=images, tokenizer=tokenizer, image_seq_len=cfg.latents)


def _vision_config(cfg: ModelConfig) -> dict:
    if cfg.vision:
        siglip = SiglipVisionConfig.from_pretrained(cfg.vision)
        keep = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size",
                "patch_size", "hidden_act", "layer_norm_eps")
        return {name: getattr(siglip, name) for name in keep}
    return dict(hidden_size=cfg.vision_hidden, intermediate_size=4 * cfg.vision_hidden,
                num_hidden_layers=cfg.vision_layers, num_attention_heads=cfg.vision_heads,
                image_size=cfg.vision_image_size, patch_size=cfg.patch_size)


def _text_config(cfg: ModelConfig, vocab: int) -> MistralConfig:
    if cfg.text:
        text = AutoConfig.from_pretrained(cfg.text)
        if text.model_type != "mistral":
            raise ConfigError(f"--model text={cfg.text}: a {text.model_type} model; Idefics2 wants a Mistral one")
        return text
    return MistralConfig(vocab_size=vocab, hidden_size=cfg.text_hidden, intermediate_size=cfg.text_intermediate,
                         num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.text_heads,
                         num_key_value_heads=cfg.text_kv_heads, max_position_embeddings=4096, pad_token_id=0)


def _load_siglip(model: Idefics2ForConditionalGeneration, name: str) -> None:
    """SigLIP's vision transformer into Idefics2's: the same layers under the same names, minus SigLIP's pooling
    head (Idefics2 pools with its resampler instead)."""
    siglip = SiglipVisionModel.from_pretrained(name, dtype=model.dtype).state_dict()
    siglip = {k.removeprefix("vision_model."): v for k, v in siglip.items()}  # the prefix of older versions
    siglip = {k: v for k, v in siglip.items() if not k.startswith("head.")}
    missing, unexpected = model.model.vision_model.load_state_dict(siglip, strict=False)
    if missing or unexpected:
        raise ConfigError(f"--model vision={name}: not a SigLIP vision tower (missing {missing[:3]}, "
                          f"unexpected {unexpected[:3]})")


def build_model(cfg: ModelConfig, processor: Idefics2Processor, dtype: torch.dtype) -> Idefics2ForConditionalGeneration:
    """Idefics2 with its embeddings sized to the tokenizer (the special tokens were just added)."""
    tokenizer = processor.tokenizer
    if cfg.checkpoint:
        model = Idefics2ForConditionalGeneration.from_pretrained(cfg.checkpoint, dtype=dtype)
    else:
        perceiver = dict(resampler_n_latents=cfg.latents, resampler_depth=cfg.resampler_depth,
                         resampler_n_heads=cfg.resampler_heads, resampler_head_dim=cfg.resampler_head_dim,
                         num_key_value_heads=cfg.resampler_kv_heads)
        text = _text_config(cfg, len(tokenizer))
        perceiver.update(hidden_size=text.hidden_size, rms_norm_eps=text.rms_norm_eps)
        config = Idefics2Config(vision_config=_vision_config(cfg), text_config=text.to_dict(),
                                perceiver_config=perceiver, image_token_id=processor.image_token_id)
        model = Idefics2ForConditionalGeneration(config).to(dtype)
        if cfg.vision:
            _load_siglip(model, cfg.vision)
        if cfg.text:
            language = AutoModelForCausalLM.from_pretrained(cfg.text, dtype=dtype)
            model.model.text_model, model.lm_head = language.model, language.lm_head
    if model.config.image_token_id != processor.image_token_id:
        raise ConfigError(f"--model: the checkpoint's image token {model.config.image_token_id} is not the "
                          f"tokenizer's {processor.image_token_id}")
    if model.get_input_embeddings().num_embeddings < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
    return model


def adapter_kind(cfg: ModelConfig, train: TrainConfig) -> str:
    """`auto`: DoRA when there are pretrained backbones to adapt, full training for a model built from scratch."""
    if train.adapter != "auto":
        return train.adapter
    return "dora" if (cfg.checkpoint or cfg.vision or cfg.text) else "none"


def add_adapters(model, kind: str, train: TrainConfig, new_token_ids: list[int]):
    """LoRA/DoRA on the backbones (peft), the connector and the new tokens' embeddings trained fully."""
    if kind == "none":
        return model
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=train.lora_rank, lora_alpha=train.lora_alpha, lora_dropout=0.0, use_dora=kind == "dora",
                        target_modules=ADAPTER_TARGETS, init_lora_weights="gaussian",
                        trainable_token_indices={"embed_tokens": new_token_ids} if new_token_ids else None)
    model = get_peft_model(model, config)
    for parameter in model.base_model.model.model.connector.parameters():
        parameter.requires_grad_(True)
    return model


@dataclass
class ParamGroups:
    new: list[torch.nn.Parameter]
    adapted: list[torch.nn.Parameter]

    def optimizer_groups(self, train: TrainConfig) -> list[dict]:
        """Weight decay on matrices only (not on norms, biases, embeddings' new rows)."""
        groups = []
        for params, lr in ((self.new, train.lr_new), (self.adapted, train.lr_adapted)):
            decay = [p for p in params if p.ndim >= 2]
            other = [p for p in params if p.ndim < 2]
            groups += [{"params": decay, "lr": lr, "weight_decay": train.weight_decay},
                       {"params": other, "lr": lr, "weight_decay": 0.0}]
        return [group for group in groups if group["params"]]


def param_groups(model, kind: str, from_scratch: bool) -> ParamGroups:
    """New parameters (the connector; every weight of a model built from scratch) vs adapted ones (adapters, the
    new token rows, or pretrained backbones trained fully). Trainable parameters are kept in fp32."""
    new, adapted = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        parameter.data = parameter.data.float()
        (new if ".connector." in f".{name}" or (from_scratch and kind == "none") else adapted).append(parameter)
    return ParamGroups(new, adapted)


def add_neftune(model, alpha: float) -> torch.utils.hooks.RemovableHandle:
    """NEFTune (Jain et al. 2023, arXiv 2310.05914): in training, add uniform noise of magnitude
    alpha / sqrt(L * d) to the text embeddings (L the padded length, d the width). Used in Idefics2's SFT."""

    def noisy(module, inputs, output):
        if not module.training:
            return output
        scale = alpha / (output.size(1) * output.size(2)) ** 0.5
        return output + torch.zeros_like(output).uniform_(-scale, scale)

    return model.get_input_embeddings().register_forward_hook(noisy)
