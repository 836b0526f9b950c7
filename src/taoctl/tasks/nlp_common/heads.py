"""The task heads on the encoder's hidden states, as NeMo defined them."""

from __future__ import annotations

from torch import nn

from taoctl.errors import TaoctlError


class MultiLayerPerceptron(nn.Module):
    """NeMo's MultiLayerPerceptron: ``num_layers - 1`` hidden Linear+activation layers of the encoder's width,
    then a Linear to ``num_classes``."""

    def __init__(self, hidden: int, num_classes: int, num_layers: int = 2, activation: str = "relu"):
        super().__init__()
        activations = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}
        if activation not in activations:
            raise TaoctlError(f"head activation {activation!r}: use one of {', '.join(activations)}")
        layers: list[nn.Module] = []
        for _ in range(max(num_layers, 1) - 1):
            layers += [nn.Linear(hidden, hidden), activations[activation]()]
        layers.append(nn.Linear(hidden, num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x):
        return self.layers(x)


class SequenceClassifier(nn.Module):
    """NeMo's SequenceClassifier: dropout, then an MLP on the first ([CLS]) token's hidden state -> logits."""

    def __init__(self, hidden: int, num_classes: int, num_layers: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.mlp = MultiLayerPerceptron(hidden, num_classes, num_layers)

    def forward(self, hidden, attention_mask):
        return self.mlp(self.dropout(hidden[:, 0]))


class TokenClassifier(nn.Module):
    """NeMo's TokenClassifier: dropout, then an MLP on every token's hidden state -> per-token logits."""

    def __init__(self, hidden: int, num_classes: int, num_layers: int, dropout: float, activation: str):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.mlp = MultiLayerPerceptron(hidden, num_classes, num_layers, activation)

    def forward(self, hidden, attention_mask):
        return self.mlp(self.dropout(hidden))
