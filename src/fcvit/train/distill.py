"""Knowledge distillation as DeiT does it ("Training data-efficient image transformers", Touvron et al., 2021).

The student carries a distillation token next to its class token (the DeiT hosts' ``distilled=True``, see
:class:`fcvit.models.dynconv.DistilledDynConvViT`); in training it returns one prediction per token. The class
token learns the labels, the distillation token the teacher: its argmax (``hard``) or its distribution at
temperature tau (``soft``), the two losses weighted ``1 - alpha`` and ``alpha``. At evaluation the student
averages the two heads. timm has the distilled ViT but no distillation loss, hence :class:`DistillationLoss`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import command_backend
from ..hub import load
from .config import TrainConfig

__all__ = ["DistillationLoss", "load_teacher"]


class DistillationLoss(nn.Module):
    """DeiT's ``DistillationLoss``: ``(1 - alpha) base(class logits, targets) + alpha distill(dist logits, teacher)``.

    ``hard``: cross-entropy of the distillation logits against the teacher's argmax. ``soft``: KL divergence
    between the student's and the teacher's distributions at temperature ``tau``, times ``tau**2``, averaged
    over the logits (DeiT's normalisation). The teacher sees the same (augmented, mixed) images as the student,
    resized (bicubic) to ``teacher_size`` when it was trained at another size.
    """

    def __init__(
        self,
        base: nn.Module,
        teacher: nn.Module,
        kind: str,
        alpha: float = 0.5,
        tau: float = 1.0,
        teacher_size: tuple[int, int] | None = None,
    ):
        super().__init__()
        if kind not in ("hard", "soft"):
            raise ValueError(f"--distill must be 'hard' or 'soft' to distil, got {kind!r}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"--distill-alpha must lie in [0, 1], got {alpha}")
        if not tau > 0:
            raise ValueError(f"--distill-tau must be positive, got {tau}")
        self.base, self.teacher, self.kind, self.alpha, self.tau = base, teacher, kind, alpha, tau
        self.teacher_size = None if teacher_size is None else tuple(teacher_size)

    def forward(
        self, outputs: tuple[torch.Tensor, torch.Tensor], targets: torch.Tensor, inputs: torch.Tensor
    ) -> torch.Tensor:
        if not isinstance(outputs, (tuple, list)) or len(outputs) != 2:
            raise ValueError(
                "distillation needs the student's class and distillation predictions in training (a model built "
                "with distilled=True and distilled_training on); got a single prediction"
            )
        logits, logits_dist = outputs
        with torch.no_grad():
            if self.teacher_size is not None and tuple(inputs.shape[-2:]) != self.teacher_size:
                inputs = F.interpolate(inputs, size=self.teacher_size, mode="bicubic", align_corners=False)
            teacher_logits = self.teacher(inputs)
        if self.kind == "soft":
            t = self.tau
            distill = F.kl_div(
                F.log_softmax(logits_dist / t, dim=1),
                F.log_softmax(teacher_logits.float() / t, dim=1),
                reduction="sum",
                log_target=True,
            ) * (t * t / logits_dist.numel())
        else:
            distill = F.cross_entropy(logits_dist, teacher_logits.argmax(dim=1))
        return (1 - self.alpha) * self.base(logits, targets) + self.alpha * distill


def _same(a: Any, b: Any) -> bool:
    return len(a) == len(b) and all(math.isclose(float(x), float(y), rel_tol=1e-4) for x, y in zip(a, b))


def load_teacher(
    cfg: TrainConfig, data_config: dict[str, Any], num_classes: int, device: torch.device
) -> tuple[nn.Module, tuple[int, int]]:
    """The teacher of ``cfg.teacher`` in eval mode without gradients, on ``device``, optimised unless
    ``--no-optimize``, and its input size. It must read the student's images (channels, mean, std; the size may
    differ: :class:`DistillationLoss` resizes) and predict the student's classes."""
    loaded = load(
        cfg.teacher, model=cfg.teacher_model or None, ema=cfg.teacher_ema, optimize=command_backend(cfg.optimize)
    )
    teacher, teacher_data = loaded.model, loaded.data_config
    for key, part in (("input_size", slice(0, 1)), ("mean", slice(None)), ("std", slice(None))):
        if not _same(teacher_data[key][part], data_config[key][part]):
            raise ValueError(
                f"--teacher {cfg.teacher}: its {key} is {list(teacher_data[key])}, the student's "
                f"{list(data_config[key])}; the teacher must read the student's images"
            )
    classes = teacher.num_classes if hasattr(teacher, "num_classes") else None
    if classes != num_classes:
        raise ValueError(f"--teacher {cfg.teacher} predicts {classes} classes, the data has {num_classes}")
    teacher.requires_grad_(False)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    size = (int(teacher_data["input_size"][1]), int(teacher_data["input_size"][2]))
    return teacher.to(device=device, memory_format=memory_format).eval(), size
