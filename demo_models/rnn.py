"""Recurrent text classifier demo: Embedding -> LSTM -> GRU -> last step -> fc."""

from __future__ import annotations

import torch
from torch import nn


class TextRNN(nn.Module):
    """``nn.Embedding`` -> ``nn.LSTM`` -> ``nn.GRU`` (both ``batch_first``) -> ``out[:, -1]``
    -> ``fc``.

    Exercises: embedding columns as a prunable dim; recurrent layers whose hidden size is
    tied to 4 (LSTM: i, f, g, o) or 3 (GRU: r, z, n) gate blocks in ``weight_ih_l0`` /
    ``weight_hh_l0`` / biases, and to ``weight_hh``'s *input* columns (a self-loop); tuple
    outputs ``(out, h)``; last-time-step selection by indexing.
    """

    def __init__(
        self,
        vocab: int = 100,
        embed_dim: int = 16,
        lstm_hidden: int = 32,
        gru_hidden: int = 24,
        num_classes: int = 4,
    ) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, embed_dim)
        self.lstm = nn.LSTM(embed_dim, lstm_hidden, batch_first=True)
        self.gru = nn.GRU(lstm_hidden, gru_hidden, batch_first=True)
        # a bidirectional Elman RNN: output features are [forward h | reverse h]
        self.rnn = nn.RNN(gru_hidden, gru_hidden, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(2 * gru_hidden, num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embedding(tokens)
        x, _ = self.lstm(x)
        x, _ = self.gru(x)
        x, _ = self.rnn(x)
        return self.fc(x[:, -1])


def build_rnn(**kwargs) -> TextRNN:
    return TextRNN(**kwargs)
