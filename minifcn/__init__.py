"""minifcn: Fully Convolutional Networks (Long, Shelhamer, Darrell 2015) from scratch on NumPy and CuPy.

    minifcn.backend    numpy/cupy choice, to_device / to_numpy
    minifcn.im2col     im2col / col2im (fast tap loop + naive loop specification)
    minifcn.ops        the functional core: op_forward -> (out, cache), op_backward(dout, cache)
    minifcn.layers     thin stateful wrappers holding params, grads and caches
    minifcn.gradcheck  numerical derivatives to check every backward
"""
__version__ = "0.1.0"
