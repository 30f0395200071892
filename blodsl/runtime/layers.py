"""Model constructors for the layers a program can declare (blodsl.builtins.LAYERS).

Models are only a structure here: their weights live in the upper or lower
variables and are applied with torch.func.functional_call.
"""

from __future__ import annotations

from torch import nn

_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "gelu": nn.GELU}


def Linear(in_features, out_features, bias=True):
    return nn.Linear(in_features, out_features, bias=bias)


def MLP(in_features, hidden, out_features, activation="relu", bias=True):
    sizes = [in_features, *hidden, out_features]
    layers = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        layers.append(nn.Linear(a, b, bias=bias))
        if i < len(sizes) - 2:
            layers.append(_ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


def Conv2d(in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True):
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias)


def MaxPool2d(kernel_size):
    return nn.MaxPool2d(kernel_size)


Flatten, ReLU, Tanh, Sigmoid, GELU = nn.Flatten, nn.ReLU, nn.Tanh, nn.Sigmoid, nn.GELU
Sequential = nn.Sequential
