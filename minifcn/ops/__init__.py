"""The functional core: every op is a pair `op_forward(...) -> (out, cache)` and
`op_backward(dout, cache) -> gradients`, written side by side in one file per op family."""
from .activation import dropout_backward, dropout_forward, relu_backward, relu_forward
from .conv import (bilinear_kernel, bilinear_weight, conv2d_backward, conv2d_forward, conv2d_naive,
                   conv_transpose2d_backward, conv_transpose2d_forward, conv_transpose2d_naive,
                   conv_transpose2d_output_size)
from .fuse import add_backward, add_forward, crop_backward, crop_forward, scale_backward, scale_forward
from .loss import softmax_cross_entropy
from .pool import max_pool2d_backward, max_pool2d_forward, max_pool2d_naive, pool_output_size

__all__ = [name for name in dir() if not name.startswith("_") and name not in
           ("activation", "conv", "fuse", "loss", "pool")]
