"""Training losses: RankMixup's ranking losses and the baselines they are compared with."""

from pipeline.losses.baselines import focal_loss, label_smoothing_loss, mixup_loss
from pipeline.losses.rankmixup import mndcg_loss, mrl_loss

__all__ = ["focal_loss", "label_smoothing_loss", "mixup_loss", "mndcg_loss", "mrl_loss"]
