"""The model contract: builders (torchvision AlexNet / ResNet with an optional small-input stem, an MLP baseline)
and the checkpoint format with its one loader. Training writes checkpoints; export and serving rebuild from them."""

from convserve.models.builders import ARCH_MIN_INPUT, build_model, model_from_checkpoint, resolve_input_size

__all__ = ["ARCH_MIN_INPUT", "build_model", "model_from_checkpoint", "resolve_input_size"]
