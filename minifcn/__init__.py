"""minifcn: Fully Convolutional Networks (Long, Shelhamer, Darrell 2015) from scratch on NumPy and CuPy.

    minifcn.backend    numpy/cupy choice, to_device / to_numpy
    minifcn.im2col     im2col / col2im (fast tap loop + naive loop specification)
    minifcn.ops        the functional core: op_forward -> (out, cache), op_backward(dout, cache)
    minifcn.layers     thin stateful wrappers holding params, grads and caches
    minifcn.geometry   coordinate maps: crop offsets, receptive fields, output strides
    minifcn.models     FCN-32s/16s/8s/8s-at-once on VGG16: build, load, net surgery
    minifcn.gradcheck  numerical derivatives to check every backward
    minifcn.optim      SGD with momentum as in Caffe, learning-rate schedules
    minifcn.metrics    confusion matrix and the paper's four metrics
    minifcn.data       built-in shapes dataset, VOC / SBD / folder readers, transforms
    minifcn.weights    torchvision / Caffe / Keras VGG16 readers -> minifcn .npz
    minifcn.viz        colours, overlays, tiles, training curves

Command-line jobs: python -m minifcn.train | evaluate | predict | convert | gradcheck
"""
__version__ = "0.1.0"
