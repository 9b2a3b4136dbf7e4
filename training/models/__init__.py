"""Model builders: torchvision AlexNet / ResNet (optional small-input stem), an MLP baseline."""

from training.models.builders import ARCH_MIN_INPUT, build_model, model_from_checkpoint, resolve_input_size

__all__ = ["ARCH_MIN_INPUT", "build_model", "model_from_checkpoint", "resolve_input_size"]
