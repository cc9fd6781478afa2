"""Sequence models: a transformer encoder, recurrent cells with state in and out, audio."""

from __future__ import annotations

from pathlib import Path

from zoo._export import export, randomize_batchnorm, seeded

TOKENS, VOCAB, WIDTH = 16, 100, 32


def _encoder_class():
    import torch
    from torch import nn

    class Attention(nn.Module):
        def __init__(self, heads: int = 4) -> None:
            super().__init__()
            self.heads = heads
            self.qkv, self.out = nn.Linear(WIDTH, 3 * WIDTH), nn.Linear(WIDTH, WIDTH)

        def forward(self, x):
            b, t, _ = x.shape
            q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
            weights = torch.softmax(q @ k.transpose(-1, -2) / (q.shape[-1] ** 0.5), dim=-1)
            return self.out((weights @ v).transpose(1, 2).reshape(b, t, WIDTH))

    class Layer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn, self.norm1, self.norm2 = Attention(), nn.LayerNorm(WIDTH), nn.LayerNorm(WIDTH)
            self.ffn = nn.Sequential(nn.Linear(WIDTH, 2 * WIDTH), nn.GELU(),
                                     nn.Linear(2 * WIDTH, WIDTH))

        def forward(self, x):
            x = self.norm1(x + self.attn(x))
            return self.norm2(x + self.ffn(x))

    class Encoder(nn.Module):
        """Token ids (int64) and a keep-mask (bool) -> a pooled embedding and class logits."""

        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(VOCAB, WIDTH)
            self.position = nn.Parameter(torch.randn(1, TOKENS, WIDTH) * 0.1)
            self.layers = nn.Sequential(Layer(), Layer())
            self.head = nn.Linear(WIDTH, 4)

        def forward(self, tokens, mask):
            keep = mask.unsqueeze(-1).to(torch.float32)
            x = self.layers((self.embed(tokens) + self.position) * keep)
            pooled = (x * keep).sum(1) / keep.sum(1).clamp(min=1.0)
            return self.head(pooled), pooled

    return Encoder


def build_transformer(folder: Path) -> Path:
    """Transformer encoder: attention, LayerNorm, GELU; int64 token and bool mask inputs."""
    import torch

    seeded(5)
    tokens = torch.randint(0, VOCAB, (1, TOKENS))
    mask = torch.ones(1, TOKENS, dtype=torch.bool)
    return export(_encoder_class()(), (tokens, mask), folder / "transformer.onnx",
                  ["tokens", "mask"], ["logits", "embedding"])


def _lstm_class():
    from torch import nn

    class Tagger(nn.Module):
        """An LSTM carried across calls: (x, h, c) -> (y, hn, cn)."""

        def __init__(self) -> None:
            super().__init__()
            self.lstm = nn.LSTM(8, 16, batch_first=True)
            self.out = nn.Linear(16, 3)

        def forward(self, x, h, c):
            y, (hn, cn) = self.lstm(x, (h, c))
            return self.out(y), hn, cn

    return Tagger


def build_lstm_state(folder: Path) -> Path:
    """LSTM with state in and out: x 1x10x8, h and c 1x1x16 -> y, hn, cn."""
    import torch

    seeded(6)
    example = (torch.randn(1, 10, 8), torch.zeros(1, 1, 16), torch.zeros(1, 1, 16))
    return export(_lstm_class()(), example, folder / "lstm_state.onnx",
                  ["x", "h", "c"], ["y", "hn", "cn"])


def _gru_class():
    from torch import nn

    class Streamer(nn.Module):
        """A GRU over a chunk of frames, its state carried to the next chunk."""

        def __init__(self) -> None:
            super().__init__()
            self.inp = nn.Linear(12, 16)
            self.gru = nn.GRU(16, 24, batch_first=True)
            self.out = nn.Linear(24, 2)

        def forward(self, frames, state):
            y, state_out = self.gru(self.inp(frames).relu(), state)
            return self.out(y[:, -1]).sigmoid(), state_out

    return Streamer


def gru_state_module():
    """The GRU as a PyTorch factory, with its example inputs."""
    import torch

    seeded(7)
    return _gru_class()().eval(), (torch.randn(1, 8, 12), torch.zeros(1, 1, 24))


def build_gru_state(folder: Path) -> Path:
    """GRU with state in and out: frames 1x8x12, state 1x1x24 -> prob, state_out."""
    module, example = gru_state_module()
    return export(module, example, folder / "gru_state.onnx", ["frames", "state"],
                  ["prob", "state_out"])


def _audio_class():
    from torch import nn

    class KeywordSpotter(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            layers, cin = [], 1
            for cout, k, s in ((16, 9, 4), (32, 5, 2), (32, 3, 2)):
                layers += [nn.Conv1d(cin, cout, k, s, k // 2, bias=False),
                           nn.BatchNorm1d(cout), nn.ReLU()]
                cin = cout
            self.features = nn.Sequential(*layers)
            self.fc = nn.Linear(32, 6)

        def forward(self, audio):
            return self.fc(self.features(audio).mean(dim=2))

    return KeywordSpotter


def build_audio_conv1d(folder: Path) -> Path:
    """1-D convolutional audio model on 1x1x1600 samples (0.1 s at 16 kHz)."""
    import torch

    seeded(8)
    model = _audio_class()()
    randomize_batchnorm(model)
    return export(model, (torch.randn(1, 1, 1600),), folder / "audio_conv1d.onnx",
                  ["audio"], ["logits"])
