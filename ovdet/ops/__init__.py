"""Tensor operations shared by models, losses and eval: box formats and the IoU family."""
