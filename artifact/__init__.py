"""The artifact contract export writes and serving reads: the model card, the labels file and the runtimes that
open the model files (ONNX Runtime, TorchScript) with serving's settings. Imports no stage."""
