"""The FCN family on a VGG16 body.

    build(name, num_classes=21, backbone="vgg16", ...)   a new net: "fcn32s", "fcn16s", "fcn8s", "fcn8s-atonce"
    load(path)                                           the net a file written by net.save(path) holds
    net.forward(x, train) / net.backward(dscores)        scores (N, K, H, W) for x (N, 3, H, W); gradients
    net.load_weights(path, strict=False)                 net surgery: FCN-16s from FCN-32s, FCN from VGG16, ...
    @register class FCN4s(FCN): ...                      a head of your own, known to build and load by its arch
"""
from .fcn import (ARCHITECTURES, FCN, FCN8s, FCN8sAtOnce, FCN16s, FCN32s, LoadReport, Params, build, load,
                  register)
from .vgg import BACKBONES, CAFFE_PREPROCESSING, TORCHVISION_PREPROCESSING, TRUNK, VGG16

__all__ = ["ARCHITECTURES", "BACKBONES", "CAFFE_PREPROCESSING", "FCN", "FCN8s", "FCN8sAtOnce", "FCN16s", "FCN32s",
           "LoadReport", "Params", "TORCHVISION_PREPROCESSING", "TRUNK", "VGG16", "build", "load", "register"]
