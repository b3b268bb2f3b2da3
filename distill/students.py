"""Compact students (and the larger teachers) by view kind, each built from a JSON-able spec (no pickle).

Every network is ``Normalize -> encoder -> embedding (B, E) -> linear head (B, K)``: the view's train-split mean and
std are buffers of the network, so an exported graph takes raw samples. ``forward`` returns logits; ``embed`` the
embedding; ``forward_both`` both.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from cmcd_edge.errors import UserError
from cmcd_edge.registry import Registry, check_keys

ARCH_FOR_KIND = {"vector": "mlp", "sequence": "cnn1d", "image": "cnn2d"}
EVAL_BYTES = {"cpu": 8 << 20, "cuda": 256 << 20}  # the largest activation of one inference batch, float32
TRAIN_FACTOR = 1.5  # a training step's memory over its forward activations
MIN_EVAL_ROWS = 16  # from 16 rows a batch on, a row's outputs are the same bits in any batch (smaller: other kernels)
STEM_STRIDE_FROM = 32  # a conv stem strides 2 from this many steps (cnn1d) or pixels on the short side (cnn2d)
STEM_STRIDES = (1, 2)  # the strides a spec (and a config's stem_stride) may ask for


@dataclass(frozen=True)
class NetSpec:
    """Everything needed to rebuild a network: saved as student.json / teacher.json beside the safetensors."""

    arch: str
    in_shape: tuple[int, ...]  # one sample, e.g. (47,), (6, 256), (1, 16, 15)
    num_classes: int
    embed_dim: int = 128
    width: int = 96
    depth: int = 2
    dropout: float = 0.1
    stem_stride: int | None = None  # conv nets: set from the input's size when not given; vectors: None (no stem)

    def __post_init__(self) -> None:
        object.__setattr__(self, "in_shape", tuple(int(d) for d in self.in_shape))
        if self.arch not in STUDENTS:
            STUDENTS.get(self.arch)  # raises with the valid names
        for name in ("num_classes", "embed_dim", "width", "depth"):
            if int(getattr(self, name)) < 1:
                raise UserError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.stem_stride is None:
            object.__setattr__(self, "stem_stride", default_stem_stride(self.in_shape))
        elif default_stem_stride(self.in_shape) is None:
            raise UserError(f"stem_stride {self.stem_stride}: a network of vector samples {list(self.in_shape)} has no "
                            "stem; leave stem_stride out")
        elif self.stem_stride not in STEM_STRIDES:
            raise UserError(f"stem_stride must be 1 or 2, got {self.stem_stride}")

    def to_json(self) -> dict:
        d = {**asdict(self), "in_shape": list(self.in_shape)}
        return d if d["stem_stride"] is not None else {k: v for k, v in d.items() if k != "stem_stride"}

    @classmethod
    def from_json(cls, d: dict) -> NetSpec:
        """A spec saved by :meth:`to_json`. One saved before the spec held ``stem_stride`` (session 35) is read as that
        code built it: a cnn1d stem strided 2 at every length, a cnn2d stem as the size rule still says."""
        check_keys(d, cls.__dataclass_fields__, "network spec")
        if "stem_stride" not in d and "arch" in d and d["arch"] == "cnn1d":
            d = {**d, "stem_stride": 2}
        return cls(**d)


def default_stem_stride(in_shape: tuple[int, ...]) -> int | None:
    """A conv stem's stride: 2 from ``STEM_STRIDE_FROM`` steps (sequence) or pixels on the short side (image) on, 1
    under it, where a halved input leaves the blocks too few positions (benchmarks/cnn1d_stem.py); None for a
    vector."""
    return None if len(in_shape) < 2 else 2 if min(in_shape[1:]) >= STEM_STRIDE_FROM else 1


STUDENTS: Registry = Registry("student architecture")


class Normalize(nn.Module):
    """(x - mean) / std with per-feature (vector) or per-channel (sequence, image) statistics as buffers."""

    def __init__(self, in_shape: tuple[int, ...]) -> None:
        super().__init__()
        stat_shape = (in_shape[0],) + (1,) * (len(in_shape) - 1)
        self.register_buffer("mean", torch.zeros(stat_shape))
        self.register_buffer("std", torch.ones(stat_shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.mean) / self.std


class Net(nn.Module):
    def __init__(self, spec: NetSpec, encoder: nn.Module, feat_dim: int) -> None:
        super().__init__()
        self.spec = spec
        self.norm = Normalize(spec.in_shape)
        self.encoder = encoder
        self.to_embed = nn.Linear(feat_dim, spec.embed_dim)
        self.head = nn.Linear(spec.embed_dim, spec.num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.to_embed(self.encoder(self.norm(x))))  # (B, E)

    def forward_both(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e = self.embed(x)
        return self.head(e), e  # (B, K), (B, E)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))  # (B, K)

    def set_normalization(self, mean, std) -> None:
        self.norm.mean.copy_(torch.as_tensor(mean).reshape(self.norm.mean.shape))
        self.norm.std.copy_(torch.as_tensor(std).reshape(self.norm.std.shape))


def build(spec: NetSpec) -> Net:
    encoder, feat_dim = STUDENTS.get(spec.arch)(spec)
    return Net(spec, encoder, feat_dim)


@dataclass(frozen=True)
class Activations:
    """Per sample, in elements: the network's largest activation, and all of them (what a training step keeps)."""

    largest: int
    total: int


@functools.cache
@torch.no_grad()
def activations(spec: NetSpec) -> Activations:
    """Measured, not guessed: one sample through a throwaway build of ``spec`` in eval mode (torch's random state
    restored, so a run's weights do not move), with forward hooks on the leaf modules."""
    with torch.random.fork_rng(devices=[]):
        net = build(spec).eval()
    sizes: list[int] = []
    for m in net.modules():
        if not any(True for _ in m.children()):
            m.register_forward_hook(lambda _m, _i, out: sizes.append(out[0].numel()) if isinstance(out, torch.Tensor) else None)
    net(torch.zeros((1, *spec.in_shape)))
    return Activations(max(sizes), sum(sizes))


def eval_batch(spec: NetSpec, device: torch.device) -> int:
    """Rows per inference batch (evaluation, cached embeddings): at most 1024, fewer where the network's largest
    activation of a batch would pass the device's budget. On the CPU that is 8 MB: batches that stay in cache run
    2-8x faster than 1024 rows of a conv net (3x64x64 student: 3,648 rows/s at 32 rows against 482 at 1024; the
    6x128 and mfeat networks keep 512-1024); on CUDA 256 MB. Never under 16 rows: from 16 rows on, a row's outputs
    do not depend on the batch, bit for bit, on every default network (batches of 1-15 take other CPU kernels), so
    this moves speed and memory, not figures."""
    budget = EVAL_BYTES[device.type] if device.type in EVAL_BYTES else EVAL_BYTES["cuda"]
    return max(MIN_EVAL_ROWS, min(1024, budget // (4 * activations(spec).largest)))


def train_bytes(spec: NetSpec, batch: int) -> int:
    """Estimated activation bytes of one training step of ``batch`` rows: every leaf module's output, float32, x1.5
    for the gradients alive during backward (a 3x64x64 image teacher: 6.5 MB a row measured; its 128-row steps
    peaked at about 0.9 GB above the process's baseline)."""
    return int(batch * activations(spec).total * 4 * TRAIN_FACTOR)


def check_buildable(spec: NetSpec) -> None:
    """Build ``spec`` once and drop it, leaving torch's random state as it was: the factories' shape checks raise
    their UserError before any training is spent."""
    with torch.random.fork_rng(devices=[]):
        build(spec)


def train_layout(net: Net) -> Net:
    """Image nets train with channels-last weights (their activations follow): oneDNN's CPU convolutions run ~1.6x
    faster so (the mfeat pix teacher: 215 -> 130 ms per step on 2 cores). The same function; float rounding may
    differ from the default layout, so a run stays bit-reproducible only against itself. Saved state is made
    contiguous again."""
    return net.to(memory_format=torch.channels_last) if len(net.spec.in_shape) == 3 else net


# ------------------------------------------------------------------------------------------------ mlp (vectors)


@STUDENTS.register("mlp")
def mlp(spec: NetSpec) -> tuple[nn.Module, int]:
    """depth x (Linear -> BatchNorm -> ReLU -> Dropout) on a feature vector (B, D)."""
    if len(spec.in_shape) != 1:
        raise UserError(f"mlp takes vector views [N, D]; got sample shape {list(spec.in_shape)}")
    layers: list[nn.Module] = []
    d = spec.in_shape[0]
    for _ in range(spec.depth):
        layers += [nn.Linear(d, spec.width), nn.BatchNorm1d(spec.width), nn.ReLU(), nn.Dropout(spec.dropout)]
        d = spec.width
    return nn.Sequential(*layers), d


# ------------------------------------------------------------------------------ BatchNorm for the conv students


class _WarmStartStats:
    """BatchNorm whose running statistics are the plain mean of the batches seen until that mean weighs each batch
    less than ``momentum`` does, then torch's moving average: ``momentum_n = max(momentum, 1 / (n + 1))`` for the
    n-th training batch (``num_batches_tracked``, so a resumed run picks up where it was).

    A conv layer on a short sequence or a small image reads mostly padding, so its outputs start with a variance far
    below the initial running variance of 1 (measured: 0.002 to 0.13 on a [4, 2] sequence). With the plain moving
    average that 1 is forgotten only after ~40 steps; a few hundred rows give a step or two per epoch, so the
    eval-mode network divides each layer by a variance 5 to 300 times too large, gives nearly the same logits for
    every row and predicts one class (chance accuracy for every method while the training loss fell). PyTorch's
    ``momentum=None`` (a plain mean over all of training) fixes the start but keeps statistics of weights long gone.
    The mlp keeps torch's BatchNorm: its layers start near unit variance, and tiny vector sets measured no gain.
    """

    def __init__(self, num_features: int) -> None:
        super().__init__(num_features)
        self.target_momentum = self.momentum
        self.warming = True  # kept, not derived: reading num_batches_tracked syncs a GPU, so only the first steps do

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.track_running_stats and self.warming:
            seen = int(self.num_batches_tracked)
            self.momentum = max(self.target_momentum, 1.0 / (seen + 1))
            self.warming = seen + 1 < 1.0 / self.target_momentum
        return super().forward(x)

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        self.warming = True  # the loaded num_batches_tracked decides again
        super()._load_from_state_dict(*args, **kwargs)


class BatchNorm1d(_WarmStartStats, nn.BatchNorm1d):
    """(B, C) or (B, C, T), warm-started."""


class BatchNorm2d(_WarmStartStats, nn.BatchNorm2d):
    """(B, C, H, W), warm-started."""


# ------------------------------------------------------------------------------------------- cnn1d (sequences)


class SeparableBlock1d(nn.Module):
    """Depthwise (k=5) then pointwise conv, BN, ReLU; stride 2 halves T. Residual when shapes allow."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.dw = nn.Conv1d(c_in, c_in, 5, stride=stride, padding=2, groups=c_in, bias=False)
        self.pw = nn.Conv1d(c_in, c_out, 1, bias=False)
        self.bn = BatchNorm1d(c_out)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T)
        y = torch.relu(self.bn(self.pw(self.dw(x))))
        return x + y if self.residual else y


@STUDENTS.register("cnn1d")
def cnn1d(spec: NetSpec) -> tuple[nn.Module, int]:
    """Stem conv (``spec.stem_stride``: 2 on 32 steps or more), then depth x (a strided and a plain
    depthwise-separable block), global average pool -> (B, W)."""
    if len(spec.in_shape) != 2:
        raise UserError(f"cnn1d takes sequence views [N, C, T]; got sample shape {list(spec.in_shape)}")
    c, w = spec.in_shape[0], spec.width // 2
    layers: list[nn.Module] = [nn.Conv1d(c, w, 5, stride=spec.stem_stride, padding=2, bias=False), BatchNorm1d(w),
                               nn.ReLU()]
    for i in range(spec.depth):
        w_out = min(spec.width, w * 2) if i else w
        layers += [SeparableBlock1d(w, w_out, 2), SeparableBlock1d(w_out, w_out, 1)]
        w = w_out
    layers += [nn.AdaptiveAvgPool1d(1), nn.Flatten()]
    return nn.Sequential(*layers), w


# ---------------------------------------------------------------------------------------------- cnn2d (images)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand (x4), 3x3 depthwise (stride s), 1x1 project; residual when s=1 and C equal."""

    def __init__(self, c_in: int, c_out: int, stride: int, expand: int = 4) -> None:
        super().__init__()
        hidden = c_in * expand
        self.block = nn.Sequential(
            nn.Conv2d(c_in, hidden, 1, bias=False), BatchNorm2d(hidden), nn.ReLU6(),
            nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False),
            BatchNorm2d(hidden), nn.ReLU6(),
            nn.Conv2d(hidden, c_out, 1, bias=False), BatchNorm2d(c_out),
        )
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W)
        y = self.block(x)
        return x + y if self.residual else y


@STUDENTS.register("cnn2d")
def cnn2d(spec: NetSpec) -> tuple[nn.Module, int]:
    """Stem 3x3 conv (``spec.stem_stride``: 2 when the short side has 32 pixels or more), depth x (strided + plain
    inverted residual), global pool."""
    if len(spec.in_shape) != 3:
        raise UserError(f"cnn2d takes image views [N, C, H, W]; got sample shape {list(spec.in_shape)}")
    c, w = spec.in_shape[0], max(8, spec.width // 4)
    layers: list[nn.Module] = [nn.Conv2d(c, w, 3, stride=spec.stem_stride, padding=1, bias=False), BatchNorm2d(w),
                               nn.ReLU6()]
    for i in range(spec.depth):
        w_out = min(spec.width, w * 2)
        layers += [InvertedResidual(w, w_out, 2 if i < 3 else 1), InvertedResidual(w_out, w_out, 1)]
        w = w_out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers), w


# ----------------------------------------------------------------------------------------------- size figures


def default_spec(kind: str, in_shape, num_classes: int, role: str = "student", **overrides) -> NetSpec:
    """Edge-sized students (<= 100k parameters on mfeat views); teachers wider and deeper."""
    base = {"student": {"embed_dim": 128, "width": 96, "depth": 2},
            "teacher": {"embed_dim": 256, "width": 512, "depth": 2}}[role]
    if kind != "vector":
        base = {**base, "width": 64 if role == "student" else 128, "depth": 2 if role == "student" else 3}
    fields = {"arch": ARCH_FOR_KIND[kind], **base, **{k: v for k, v in overrides.items() if v is not None}}
    return NetSpec(in_shape=tuple(in_shape), num_classes=num_classes, **fields)


@dataclass
class Size:
    params: int
    macs: int
    extra: dict = field(default_factory=dict)


def measure(net: nn.Module, in_shape: tuple[int, ...]) -> Size:
    """Parameters, and multiply-accumulates of one sample from torch.utils.flop_counter (FLOPs / 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    params = sum(p.numel() for p in net.parameters())
    was_training = net.training
    net.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(torch.zeros((1, *in_shape)))
    net.train(was_training)
    return Size(params=params, macs=int(counter.get_total_flops() // 2))
