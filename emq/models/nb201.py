"""The NAS-Bench-201 network for CIFAR-10: one cell (6 edge ops) repeated in 3 stages.

Layout (Dong & Yang, ICLR 2020, "NAS-Bench-201"), for 32x32x3 input, 10 classes:

    stem           conv3x3(3 -> 16) + BN
    stage1         5 cells at C = 16 (32x32)
    reduce1        residual block 16 -> 32, stride 2
    stage2         5 cells at C = 32 (16x16)
    reduce2        residual block 32 -> 64, stride 2
    stage3         5 cells at C = 64 (8x8)
    lastact        BN + ReLU, then global average pool
    classifier     linear 64 -> 10

A cell has 4 nodes; node 0 is the cell's input, node 3 its output, and node i is
the sum of one op applied to each earlier node. The 6 edges, in the order of the
benchmark's 6-tuples (NASLib's order): 0->1, 0->2, 0->3, 1->2, 1->3, 2->3. The 5 ops,
by id: 0 skip (identity), 1 zeroize (output zero), 2 conv3x3, 3 conv1x1, 4 avg-pool
3x3 (stride 1, pad 1, padding not counted). Convs are ReLU -> conv (no bias) -> BN,
as NB201 defines them. The reduction block is a ResNet basic block: ReLU-conv3x3
(stride 2)-BN, ReLU-conv3x3-BN, plus a shortcut of 2x2 average pooling (stride 2) and
a 1x1 conv, added without a final activation.

Every module has a readable name, so per-layer statistics are keyed like
`stage2.cell4.edge1to3.conv`, `reduce1.conv_a.conv`, `reduce1.shortcut.conv` or
`classifier`. All ops are built, even on edges whose output never reaches the cell's
output (as NB201 does; their parameters count in #params).

BatchNorm normalises with the statistics of the batch it sees, in eval mode too
(`track_running_stats=False`, as NB201's search-space code can build it). These networks
are randomly initialised and never trained here, so this is the state a network is in
at the start of training, which is where the zero-cost literature scores it. With running
statistics at initialisation (mean 0, variance 1) every BN is the identity, activations
grow with depth through the cells' sums, and loss-gradient proxies rank backwards: on 200
held-out cells SNIP's Kendall with `fp_acc` is -0.39 with running statistics and +0.62
with batch statistics. There are no BN buffers, so scoring never changes a network.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

#: Op names by id (the benchmark's op ids).
OP_NAMES: tuple[str, ...] = ("skip", "zeroize", "conv3x3", "conv1x1", "avgpool3x3")
#: The 6 edges (from node, to node), in the order of a cell tuple.
EDGES: tuple[tuple[int, int], ...] = ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))
NUM_NODES = 4
STAGE_WIDTHS: tuple[int, ...] = (16, 32, 64)
CELLS_PER_STAGE = 5
NUM_CLASSES = 10
IMG_SIZE = 32


def check_cell(ops: Sequence[int]) -> tuple[int, ...]:
    """Return `ops` as a 6-tuple of op ids, or fail saying what a cell is."""
    cell = tuple(ops)
    if len(cell) != len(EDGES) or not all(isinstance(o, int) and not isinstance(o, bool) and 0 <= o < len(OP_NAMES)
                                          for o in cell):
        raise ValueError(f"an NB201 cell is 6 op ids in 0..4 ({', '.join(f'{i} {n}' for i, n in enumerate(OP_NAMES))}) "
                         f"for the edges {', '.join(f'{a}->{b}' for a, b in EDGES)}; got {ops!r}")
    return cell


def batch_norm(channels: int) -> nn.BatchNorm2d:
    """Return a BatchNorm that always normalises with the current batch's statistics (see the module docstring)."""
    return nn.BatchNorm2d(channels, track_running_stats=False)


class ReLUConvBN(nn.Sequential):
    """ReLU, then a bias-free conv, then BatchNorm: NB201's conv op (children `relu`, `conv`, `bn`)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1) -> None:
        super().__init__()
        self.add_module("relu", nn.ReLU(inplace=False))
        self.add_module("conv", nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, bias=False))
        self.add_module("bn", batch_norm(c_out))


class Zeroize(nn.Module):
    """The 'none' op: an all-zero output of the input's shape (keeps the graph connected for autograd)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mul(0.0)


def make_op(op: int, channels: int) -> nn.Module:
    """Return the module of op id `op` on `channels` channels (stride 1, shape preserving)."""
    if op == 0:
        return nn.Identity()
    if op == 1:
        return Zeroize()
    if op == 2:
        return ReLUConvBN(channels, channels, 3)
    if op == 3:
        return ReLUConvBN(channels, channels, 1)
    if op == 4:
        return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
    raise ValueError(f"unknown NB201 op id {op!r}; ids are 0..4 ({', '.join(OP_NAMES)})")


class Cell(nn.Module):
    """One NB201 cell: node j = sum over i < j of op_(i->j)(node i); returns node 3."""

    def __init__(self, ops: Sequence[int], channels: int) -> None:
        super().__init__()
        self.ops = check_cell(ops)
        # Named edges ("edge0to1" ...) so statistics read as cell.edge<from>to<to>.conv.
        for (a, b), op in zip(EDGES, self.ops):
            self.add_module(f"edge{a}to{b}", make_op(op, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nodes = [x]
        for j in range(1, NUM_NODES):
            nodes.append(sum(getattr(self, f"edge{i}to{j}")(nodes[i]) for i in range(j)))
        return nodes[-1]


class ReductionBlock(nn.Module):
    """NB201's residual reduction block: conv_b(conv_a(x)) + shortcut(x), stride 2, width c_in -> c_out."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv_a = ReLUConvBN(c_in, c_out, 3, stride=2)
        self.conv_b = ReLUConvBN(c_out, c_out, 3)
        self.shortcut = nn.Sequential()
        self.shortcut.add_module("pool", nn.AvgPool2d(2, stride=2))
        self.shortcut.add_module("conv", nn.Conv2d(c_in, c_out, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_b(self.conv_a(x)) + self.shortcut(x)


class NB201Network(nn.Module):
    """The NB201 CIFAR network of one cell: stem, 3 stages of 5 cells, 2 reduction blocks, BN-ReLU, pool, linear."""

    def __init__(self, ops: Sequence[int], num_classes: int = NUM_CLASSES,
                 widths: Sequence[int] = STAGE_WIDTHS, cells_per_stage: int = CELLS_PER_STAGE) -> None:
        super().__init__()
        self.cell_ops = check_cell(ops)
        self.stem = nn.Sequential()
        self.stem.add_module("conv", nn.Conv2d(3, widths[0], 3, padding=1, bias=False))
        self.stem.add_module("bn", batch_norm(widths[0]))
        for s, width in enumerate(widths, start=1):
            if s > 1:
                self.add_module(f"reduce{s - 1}", ReductionBlock(widths[s - 2], width))
            stage = nn.Sequential()
            for k in range(cells_per_stage):
                stage.add_module(f"cell{k}", Cell(self.cell_ops, width))
            self.add_module(f"stage{s}", stage)
        self.lastact = nn.Sequential()
        self.lastact.add_module("bn", batch_norm(widths[-1]))
        self.lastact.add_module("relu", nn.ReLU(inplace=False))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(widths[-1], num_classes)
        self.num_stages = len(widths)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for s in range(1, self.num_stages + 1):
            if s > 1:
                x = getattr(self, f"reduce{s - 1}")(x)
            x = getattr(self, f"stage{s}")(x)
        x = self.pool(self.lastact(x)).flatten(1)
        return self.classifier(x)


def nb201(ops: Sequence[int], init_seed: int = 0, num_classes: int = NUM_CLASSES) -> NB201Network:
    """Return the NB201 network of cell `ops`, initialised from `init_seed` (PyTorch default init), in eval mode."""
    cell = check_cell(ops)
    # A private generator state: the same seed gives the same weights whatever ran before.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(init_seed))
        net = NB201Network(cell, num_classes)
    return net.eval()


def analytic_param_count(ops: Sequence[int], num_classes: int = NUM_CLASSES,
                         widths: Sequence[int] = STAGE_WIDTHS, cells_per_stage: int = CELLS_PER_STAGE) -> int:
    """Return the network's number of parameters (weights, biases, BN scales and shifts) from the op counts.

    Per cell at width C: a conv3x3 op has 9C^2 weights + 2C BN parameters, a conv1x1 op
    C^2 + 2C; skip, zeroize and pooling have none. Fixed parts: stem 27*C1 + 2*C1, each
    reduction block C -> 2C: 9*C*2C + 9*(2C)^2 + C*2C weights + 2 BNs of 2C, last BN
    2*C3, classifier C3*classes + classes. For the CIFAR-10 network this is
    73,306 + 243,040 * n_conv3x3 + 28,000 * n_conv1x1.
    """
    cell = check_cell(ops)
    n3, n1 = cell.count(2), cell.count(3)
    total = 27 * widths[0] + 2 * widths[0]
    for c in widths:
        total += cells_per_stage * (n3 * (9 * c * c + 2 * c) + n1 * (c * c + 2 * c))
    for c_in, c_out in zip(widths[:-1], widths[1:]):
        total += 9 * c_in * c_out + 9 * c_out * c_out + c_in * c_out + 2 * (2 * c_out)
    total += 2 * widths[-1] + widths[-1] * num_classes + num_classes
    return total


def count_params(model: nn.Module) -> int:
    """Return the number of parameters of `model`."""
    return sum(p.numel() for p in model.parameters())
