"""Activation functions of the book: tanh, sigmoid, ReLU (torch.nn's classes, named by
configs/activation/*.yaml) and LeakyReLU with the book's `alpha`; the gain each one's scaled
initialization uses."""

from torch import nn


class LeakyReLU(nn.LeakyReLU):
    """LeakyReLU(x) = max(alpha x, x) for 0 < alpha < 1 (torch's `negative_slope`, named as the book names it)."""

    def __init__(self, alpha: float = 0.1):
        super().__init__(negative_slope=float(alpha))


KNOWN_GAINS = (nn.Sigmoid, nn.Tanh, nn.ReLU, nn.LeakyReLU)


def has_known_gain(kind) -> bool:
    """Whether `gain` knows the activation class `kind` (or one it derives from)."""
    return isinstance(kind, type) and issubclass(kind, KNOWN_GAINS)


def gain(activation: nn.Module) -> float | None:
    """The gain of torch.nn.init.calculate_gain for the activation module's kind (sigmoid 1, tanh 5/3,
    ReLU sqrt(2), LeakyReLU sqrt(2 / (1 + alpha^2))), or None for a kind it does not know."""
    if isinstance(activation, nn.LeakyReLU):
        return nn.init.calculate_gain("leaky_relu", activation.negative_slope)
    for kind, name in ((nn.Sigmoid, "sigmoid"), (nn.Tanh, "tanh"), (nn.ReLU, "relu")):
        if isinstance(activation, kind):
            return nn.init.calculate_gain(name)
    return None
