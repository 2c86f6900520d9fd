"""What every model shares: its description and the input standardisation it carries as buffers."""

from __future__ import annotations

import torch
from torch import nn

from components.models.spec import ModelSpec, check_layers


class SensingModel(nn.Module):
    """A classifier of windows shaped `spec.input_shape`, built from `spec`.

    The per-feature mean and standard deviation of the training windows are
    buffers, saved with the weights, so an exported model takes raw ingest
    output.
    """

    def __init__(self, spec: ModelSpec):
        super().__init__()
        check_layers(spec)
        self.spec = spec
        # layer name -> 0/1 float mask over its output elements (components.pruning.masked sets them);
        # a plain attribute, not a buffer: masks are never saved with the weights
        self.hidden_masks: dict[str, torch.Tensor] = {}
        self.register_buffer("input_mean", torch.zeros(spec.input_shape))
        self.register_buffer("input_std", torch.ones(spec.input_shape))

    def set_input_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.input_mean.copy_(mean)
        self.input_std.copy_(std.clamp(min=1e-6))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.input_mean) / self.input_std

    def skipped(self, name: str) -> bool:
        """Layer `name` is removed while the compressor searches: its mask keeps none of its elements."""
        mask = self.hidden_masks.get(name)
        return mask is not None and not bool(mask.any())

    def run_blocks(self, names: list[str], blocks, h: torch.Tensor) -> torch.Tensor:
        """`h` through a stack of blocks, a layer removed by the search's masks passed by as its `Bypass`."""
        for name, block in zip(names, blocks):
            h = Bypass(self.spec.layer(name).kernel)(h) if self.skipped(name) else block(h)
        return h


class Bypass(nn.Module):
    """A removed layer (`spec.BYPASS`): its input, cut by kernel - 1 positions along the last axis, centred.

    A removed convolution of kernel k left its reader L - k + 1 positions; the
    bypass leaves the same, so every later layer keeps its shape. Kernel 1 (a
    removed recurrent or dense layer) is the identity.
    """

    def __init__(self, kernel: int = 1):
        super().__init__()
        self.kernel = int(kernel)

    @property
    def cut(self) -> tuple[int, int]:
        """Positions dropped at the start and at the end of the length axis."""
        start = (self.kernel - 1) // 2
        return start, self.kernel - 1 - start

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel == 1:
            return x
        return x.narrow(-1, self.cut[0], x.shape[-1] - self.kernel + 1)

    def extra_repr(self) -> str:
        return f"kernel={self.kernel}"


def run_recurrent(rnn: nn.RNNBase, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The output sequence of a one-layer batch-first GRU/LSTM; with `mask`, masked units are removed.

    A masked unit's hidden state is zeroed at every step, inside the
    recurrence, so no other unit ever reads it: exactly what the layer does
    once that unit is sliced away (for an LSTM the masked unit's cell state
    still runs, but only its own, zeroed, output reads it).
    """
    if mask is None:
        return rnn(x)[0]
    b, t, _ = x.shape
    hidden = rnn.hidden_size
    h = x.new_zeros(b, hidden)
    c = x.new_zeros(b, hidden)
    inputs = torch.nn.functional.linear(x, rnn.weight_ih_l0, rnn.bias_ih_l0)  # [B, T, gates*H]
    outputs = []
    for step in range(t):
        recurrent = torch.nn.functional.linear(h, rnn.weight_hh_l0, rnn.bias_hh_l0)
        if isinstance(rnn, nn.GRU):
            i_r, i_z, i_n = inputs[:, step].chunk(3, dim=1)
            h_r, h_z, h_n = recurrent.chunk(3, dim=1)
            r, z = torch.sigmoid(i_r + h_r), torch.sigmoid(i_z + h_z)
            h = (1 - z) * torch.tanh(i_n + r * h_n) + z * h
        else:
            i, f, g, o = (inputs[:, step] + recurrent).chunk(4, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
        h = h * mask
        outputs.append(h)
    return torch.stack(outputs, dim=1)
