"""Inference and validation metrics of a model on batches of one part."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from fusionsearch.train.folds import Batches


@torch.inference_mode()
def predict_logits(model: nn.Module, batches: Batches) -> torch.Tensor:
    """Logits (on the CPU, float32) of every sample of ``batches``, in order."""
    model.eval()
    logits = []
    for images, _ in batches(np.arange(len(batches))):
        with batches.policy.autocast():
            logits.append(model(images).float())
    return torch.cat(logits).cpu()


def evaluate(model: nn.Module, batches: Batches) -> dict[str, Any]:
    """Validation loss (mean cross-entropy), accuracy and AUC."""
    return logit_metrics(predict_logits(model, batches), batches.data.labels)


def sample_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each sample's ``logits`` (samples x classes) for its label."""
    return nn.functional.cross_entropy(logits, labels, reduction="none")


def logit_metrics(
    logits: torch.Tensor, labels: torch.Tensor, losses: torch.Tensor | None = None
) -> dict[str, Any]:
    """Loss (mean cross-entropy), accuracy and AUC of ``logits`` (samples x classes) for ``labels``.

    ``losses``: :func:`sample_losses` of the same logits, if already computed.
    """
    losses = sample_losses(logits, labels) if losses is None else losses
    metrics = {
        "val_loss": losses.mean().item(),
        "val_accuracy": (logits.argmax(1) == labels).float().mean().item(),
        "val_auc": float("nan"),
    }
    if len(np.unique(labels)) > 1:
        probabilities = logits.softmax(dim=1).numpy()
        scores = probabilities[:, 1] if probabilities.shape[1] == 2 else probabilities
        metrics["val_auc"] = float(roc_auc_score(labels.numpy(), scores, multi_class="ovr"))
    return metrics
