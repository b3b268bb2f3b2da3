"""Distillation losses and the recipe that sums them (torchdistill style: ``Loss = 1.0 * cmd + 1.0 * cmc + 1.0 * ce``).

Each loss is an ``nn.Module`` called on a ``Pair``: the student's and the frozen teacher's outputs for a batch of paired
rows, plus the labeled batch for cross-entropy. Losses that need a projection own it, so it trains with the student.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cmcd_edge.distill.ddp import all_ranks
from cmcd_edge.errors import UserError
from cmcd_edge.registry import Registry, check_choice


@dataclass
class Pair:
    s_emb: torch.Tensor  # (B, E)   student embedding of the target view
    s_logits: torch.Tensor  # (B, K)
    t_emb: torch.Tensor  # (B, Et)  frozen teacher embedding of the paired source view
    t_logits: torch.Tensor | None  # (B, K) or None when the teacher gives no logits
    idx: torch.Tensor  # (B,)    train-row index of each pair (CRD's memory bank)
    lab_logits: torch.Tensor  # (L, K)  student logits of the labeled batch
    lab_y: torch.Tensor  # (L,)


@dataclass(frozen=True)
class LossDims:
    s_dim: int
    t_dim: int
    num_classes: int
    n_train: int


@dataclass(frozen=True)
class LossParams:
    """Hyper-parameters of the losses (defaults documented in the README, chosen on mfeat val splits)."""

    tau_s: float = 0.1  # CMD student temperature
    tau_t: float = 0.05  # CMD teacher temperature (sharper than the student's, as in SEED)
    queue_size: int = 1024  # CMD queue of past teacher embeddings (0: in-batch only)
    proj: str = "mlp"  # CMD/CMC student projector: "mlp" (SEED/MoCo v2 head) or "linear" (CLIP's projection)
    cmc_tau: float = 0.1  # CMC (CLIP) temperature
    cmc_learnable_tau: bool = False
    kd_t: float = 4.0
    rkd_distance: float = 25.0
    rkd_angle: float = 50.0
    crd_t: float = 0.07
    crd_momentum: float = 0.5
    rkd_angle_rows: int = 48  # the angle term is O(B^3 E): computed on the batch's first rows
    crd_negatives: int = 256  # of ~1200 train rows on mfeat (CRD's 16384 assumes ImageNet-sized banks)
    crd_dim: int = 128

    def __post_init__(self) -> None:
        for name in ("tau_s", "tau_t", "cmc_tau", "kd_t", "crd_t"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):  # a zero temperature divides by zero: NaN losses
                raise UserError(f"loss.{name} must be a finite number > 0 (a temperature), got {value}")
        for name in ("rkd_distance", "rkd_angle"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise UserError(f"loss.{name} must be a finite number >= 0, got {getattr(self, name)}")
        if not 0 <= self.crd_momentum <= 1:
            raise UserError(f"loss.crd_momentum must be in [0, 1], got {self.crd_momentum}")
        if self.queue_size < 0:
            raise UserError(f"loss.queue_size must be >= 0, got {self.queue_size}")
        if self.rkd_angle_rows < 3:
            raise UserError(f"loss.rkd_angle_rows must be >= 3 (an angle takes three rows), got {self.rkd_angle_rows}")
        for name in ("crd_negatives", "crd_dim"):
            if getattr(self, name) < 1:
                raise UserError(f"loss.{name} must be >= 1, got {getattr(self, name)}")


LOSSES: Registry = Registry("loss")


PROJECTORS = ("mlp", "linear")


def projector(d_in: int, d_out: int, kind: str = "mlp") -> nn.Module:
    if check_choice("loss.proj", kind, PROJECTORS) == "linear":
        return nn.Linear(d_in, d_out)
    return nn.Sequential(nn.Linear(d_in, d_in), nn.ReLU(), nn.Linear(d_in, d_out))


@LOSSES.register("ce")
class CrossEntropy(nn.Module):
    """Cross-entropy on the few labeled target rows."""

    def __init__(self, dims: LossDims, p: LossParams) -> None:
        super().__init__()

    def forward(self, b: Pair) -> torch.Tensor:
        return F.cross_entropy(b.lab_logits, b.lab_y)


@LOSSES.register("cmd")
class CMD(nn.Module):
    """Cross-modal distribution matching: CMCD's CMD (Lin et al., "A Generalization Theory of Cross-Modality
    Distillation with Contrastive Learning", arXiv 2405.03355), after SEED (Fang et al., ICLR 2021).

    Over the anchors T = the batch's teacher embeddings plus a FIFO queue of past ones (all L2-normalised; the student
    embedding goes through a trained projector to the teacher's dimension):
    p_t = softmax(t_i . T / tau_t), p_s = softmax(s_i . T / tau_s), loss = mean_i H(p_t, p_s).
    """

    def __init__(self, dims: LossDims, p: LossParams) -> None:
        super().__init__()
        self.proj = projector(dims.s_dim, dims.t_dim, p.proj)
        self.tau_s, self.tau_t = p.tau_s, p.tau_t
        self.register_buffer("queue", torch.zeros(p.queue_size, dims.t_dim))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))

    def forward(self, b: Pair) -> torch.Tensor:
        s = F.normalize(self.proj(b.s_emb), dim=1)  # (B, Et)
        t = F.normalize(b.t_emb, dim=1)  # (B, Et)
        anchors = torch.cat([t, self.queue[: int(self.filled)]], dim=0)  # (B + Q, Et)
        p_t = F.softmax(t @ anchors.T / self.tau_t, dim=1)
        log_p_s = F.log_softmax(s @ anchors.T / self.tau_s, dim=1)
        if self.training and self.queue.shape[0]:
            self._enqueue(all_ranks(t.detach()))
        return -(p_t * log_p_s).sum(dim=1).mean()

    @torch.no_grad()
    def _enqueue(self, t: torch.Tensor) -> None:
        q = self.queue.shape[0]
        t = t[:q]
        self.queue.copy_(torch.cat([t, self.queue[: q - t.shape[0]]], dim=0))
        self.filled.fill_(min(q, int(self.filled) + t.shape[0]))


@LOSSES.register("cmc")
class CMC(nn.Module):
    """Cross-modal contrastive loss: CMCD's CMC (arXiv 2405.03355), the symmetric InfoNCE of CLIP (Radford et al.,
    ICML 2021) between paired student s_i and teacher t_i with in-batch negatives; fixed or learnable temperature."""

    def __init__(self, dims: LossDims, p: LossParams) -> None:
        super().__init__()
        self.proj = projector(dims.s_dim, dims.t_dim, p.proj)
        log_inv_tau = torch.log(torch.tensor(1.0 / p.cmc_tau))
        if p.cmc_learnable_tau:
            self.log_inv_tau = nn.Parameter(log_inv_tau)
        else:
            self.register_buffer("log_inv_tau", log_inv_tau)

    def forward(self, b: Pair) -> torch.Tensor:
        s = F.normalize(self.proj(b.s_emb), dim=1)  # (B, Et)
        t = F.normalize(b.t_emb, dim=1)
        logits = s @ t.T * self.log_inv_tau.clamp(max=4.6052).exp()  # (B, B), 1/tau <= 100 as in CLIP
        target = torch.arange(s.shape[0], device=s.device)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


@LOSSES.register("kd")
class KD(nn.Module):
    """Hinton et al., "Distilling the Knowledge in a Neural Network" (2015): KL(softmax(z_t/T) || softmax(z_s/T)) * T^2
    on every paired row (labeled or not). Needs a teacher with logits."""

    def __init__(self, dims: LossDims, p: LossParams) -> None:
        super().__init__()
        self.t = p.kd_t

    def forward(self, b: Pair) -> torch.Tensor:
        if b.t_logits is None:
            raise ValueError("kd needs teacher logits; this teacher gives embeddings only")
        log_p_s = F.log_softmax(b.s_logits / self.t, dim=1)
        p_t = F.softmax(b.t_logits / self.t, dim=1)
        return F.kl_div(log_p_s, p_t, reduction="batchmean") * self.t**2


@LOSSES.register("fitnet")
class FitNet(nn.Module):
    """Romero et al., "FitNets: Hints for Thin Deep Nets" (ICLR 2015): a linear regressor from the student embedding
    to the teacher embedding, trained with MSE."""

    def __init__(self, dims: LossDims, p: LossParams) -> None:
        super().__init__()
        self.regressor = nn.Linear(dims.s_dim, dims.t_dim)

    def forward(self, b: Pair) -> torch.Tensor:
        return F.mse_loss(self.regressor(b.s_emb), b.t_emb)


@LOSSES.register("rkd")
class RKD(nn.Module):
    """Park et al., "Relational Knowledge Distillation" (CVPR 2019): smooth-L1 between mean-normalised pairwise
    distances (weight 25) and between triplet angles (weight 50) of student and teacher embeddings. The angle term
    costs O(B^3 E), so it runs on the first ``rkd_angle_rows`` rows of each (shuffled) batch."""

    def __init__(self, dims: LossDims, p: LossParams) -> None:
        super().__init__()
        self.w_d, self.w_a, self.angle_rows = p.rkd_distance, p.rkd_angle, p.rkd_angle_rows

    @staticmethod
    def _dist(e: torch.Tensor) -> torch.Tensor:
        d = torch.cdist(e, e)  # (B, B)
        return d / d[d > 0].mean().clamp_min(1e-8)

    @staticmethod
    def _angle(e: torch.Tensor) -> torch.Tensor:
        diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)  # (B, B, E)
        return torch.bmm(diff, diff.transpose(1, 2)).view(-1)  # (B*B*B,)

    def forward(self, b: Pair) -> torch.Tensor:
        t = b.t_emb
        loss_d = F.smooth_l1_loss(self._dist(b.s_emb), self._dist(t))
        k = self.angle_rows
        loss_a = F.smooth_l1_loss(self._angle(b.s_emb[:k]), self._angle(t[:k]))
        return self.w_d * loss_d + self.w_a * loss_a


@LOSSES.register("crd")
class CRD(nn.Module):
    """Tian, Krishnan, Isola, "Contrastive Representation Distillation" (ICLR 2020): linear embeddings of student and
    teacher to a shared space, a memory bank of each side's past embeddings (momentum 0.5), K negatives drawn from the
    bank, and the NCE loss with T = 0.07 in both directions (teacher anchors vs student bank and vice versa).
    Device-agnostic: the banks are buffers and the negatives come from torch.randint on the batch's device.

    Against a bank of at most ``DENSE_BANK`` x (1 + K) rows, the anchors' scores are one matrix product over the
    whole bank, from which the drawn rows' are picked: for mfeat's 1,200-row bank at K = 256 the loss step is 4x
    faster (benchmarks/crd_speed.py) than by gathering the (B, 1 + K, D) drawn rows first, which a larger bank still
    does (its full product would cost more).
    Both give the same loss up to the order of float sums."""

    DENSE_BANK = 8

    def __init__(self, dims: LossDims, p: LossParams) -> None:
        super().__init__()
        self.embed_s = nn.Linear(dims.s_dim, p.crd_dim)
        self.embed_t = nn.Linear(dims.t_dim, p.crd_dim)
        self.t, self.momentum, self.k, self.n = p.crd_t, p.crd_momentum, min(p.crd_negatives, dims.n_train - 1), dims.n_train
        stdv = 1.0 / (p.crd_dim / 3) ** 0.5
        self.register_buffer("bank_s", torch.rand(dims.n_train, p.crd_dim) * 2 * stdv - stdv)
        self.register_buffer("bank_t", torch.rand(dims.n_train, p.crd_dim) * 2 * stdv - stdv)
        self.register_buffer("z", torch.tensor([-1.0, -1.0]))  # NCE normalisers, fixed from the first batch
        self.dense = self.n <= self.DENSE_BANK * (self.k + 1)

    def _nce(self, anchor: torch.Tensor, bank: torch.Tensor, idx: torch.Tensor, which: int) -> torch.Tensor:
        b = anchor.shape[0]
        neg = torch.randint(0, self.n, (b, self.k), device=anchor.device)
        cand = torch.cat([idx.unsqueeze(1), neg], dim=1)  # (B, 1 + K): the positive first
        if self.dense:
            # a copy, as the gather's: backward needs the bank as it was, and forward updates it in place
            scores = (anchor @ bank.detach().clone().T).gather(1, cand)  # (B, N) -> (B, 1 + K)
        else:
            scores = torch.bmm(bank[cand].detach(), anchor.unsqueeze(2)).squeeze(2)  # (B, 1 + K, D) @ (B, D, 1)
        out = torch.exp(scores / self.t)  # (B, 1 + K)
        if self.z[which] < 0:
            with torch.no_grad():
                self.z[which] = out.mean() * self.n
        out = out / self.z[which].clone()
        m_pn = self.k / self.n  # K * Pn with Pn uniform
        log_pos = torch.log(out[:, 0] / (out[:, 0] + m_pn + 1e-7))
        log_neg = torch.log(m_pn / (out[:, 1:] + m_pn + 1e-7))
        return -(log_pos + log_neg.sum(dim=1)).mean()

    def forward(self, b: Pair) -> torch.Tensor:
        s = F.normalize(self.embed_s(b.s_emb), dim=1)  # (B, D)
        t = F.normalize(self.embed_t(b.t_emb), dim=1)
        loss = self._nce(t, self.bank_s, b.idx, 0) + self._nce(s, self.bank_t, b.idx, 1)
        if self.training:
            with torch.no_grad():
                idx = all_ranks(b.idx)
                for bank, new in ((self.bank_s, s), (self.bank_t, t)):
                    bank[idx] = F.normalize(bank[idx] * self.momentum + all_ranks(new.detach()) * (1 - self.momentum),
                                            dim=1)
        return loss


# ---------------------------------------------------------------------------------------------------- recipes


class Recipe(nn.Module):
    """A named weighted sum of losses; ``str(recipe)`` reads ``Loss = 1.0 * cmd + 1.0 * cmc + 1.0 * ce``."""

    def __init__(self, terms: list[tuple[float, str]], dims: LossDims, params: LossParams) -> None:
        super().__init__()
        self.weights = [float(w) for w, _ in terms]
        self.names = [n for _, n in terms]
        self.terms = nn.ModuleList([LOSSES.get(n)(dims, params) for n in self.names])

    def forward(self, b: Pair) -> tuple[torch.Tensor, dict[str, float]]:
        parts = {n: term(b) for n, term in zip(self.names, self.terms, strict=True)}
        total = sum(w * parts[n] for w, n in zip(self.weights, self.names, strict=True))
        return total, {n: float(v.detach()) for n, v in parts.items()}

    def needs_teacher(self) -> bool:
        return any(n != "ce" for n in self.names)

    def __str__(self) -> str:
        return recipe_str(list(zip(self.weights, self.names, strict=True)))


def recipe_str(terms: list[tuple[float, str]]) -> str:
    """``Loss = 1.0 * cmd + 1.0 * cmc + 1.0 * ce``."""
    return "Loss = " + " + ".join(f"{float(w)} * {n}" for w, n in terms)


# The methods of `cmcd-edge distill --method`: each a recipe. `cmd` and `cmc` are the paper's pure losses (plus the
# labeled rows' ce, as every method has); `cmcd`, the default, is their sum plus a KD and a FitNet term (ours, not the
# paper's): KD's logit matching adds about 2-4 points to cmd + cmc on mfeat; the FitNet term won the recipe sweep on
# val and then a confirmation on ten fresh seeds' val, +0.38 +- 0.19 (BENCHMARKS.md, "The default recipe").
METHODS: dict[str, list[tuple[float, str]]] = {
    "cmcd": [(1.0, "cmd"), (1.0, "cmc"), (1.0, "kd"), (1.0, "fitnet"), (1.0, "ce")],
    "cmd": [(1.0, "cmd"), (1.0, "ce")],
    "cmc": [(1.0, "cmc"), (1.0, "ce")],
    "kd": [(1.0, "kd"), (1.0, "ce")],
    "fitnet": [(1.0, "fitnet"), (1.0, "ce")],
    "rkd": [(1.0, "rkd"), (1.0, "ce")],
    "crd": [(1.0, "crd"), (1.0, "ce")],
    "supervised": [(1.0, "ce")],
}


def methods_without(term: str) -> str:
    """The methods whose recipe has no ``term``, comma-separated: what an error offers when a teacher cannot feed it."""
    return ", ".join(m for m, terms in METHODS.items() if all(n != term for _, n in terms))


def parse_recipe(text: str) -> list[tuple[float, str]]:
    """``"1.0*cmd+1.0*cmc+0.5*ce"`` (or a method name) -> terms."""
    if text in METHODS:
        return METHODS[text]
    terms: list[tuple[float, str]] = []
    for part in text.replace(" ", "").split("+"):
        w, _, name = part.rpartition("*")
        LOSSES.get(name)
        try:
            weight = float(w) if w else 1.0
        except ValueError:
            weight = float("nan")
        if not math.isfinite(weight) or weight < 0:
            raise UserError(f"--recipe {text!r}: the weight of {part!r} is not a number >= 0; write WEIGHT*LOSS terms "
                            f"joined by +, e.g. '1.0*cmd+0.5*cmc+1.0*ce'")
        if name in (n for _, n in terms):
            raise UserError(f"--recipe {text!r}: {name!r} appears twice; give each loss once, with its total weight")
        terms.append((weight, name))
    return terms
