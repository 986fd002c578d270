"""A finished search's chosen models as a folder that runs with plain PyTorch: ``fusionsearch export``.

Each fold's chosen network is saved with ``torch.export`` (an ``.pt2`` program: the graph and
the weights, loaded with ``torch.export.load`` and no model code, with a dynamic batch size).
``torch.export`` rather than TorchScript: it is PyTorch's supported path (TorchScript is in
maintenance), it captures the network exactly as it ran in eval mode (tested to the float),
and the same file feeds ``torch.compile``, AOTInductor or ONNX later. Beside the programs:

- ``preprocessing.json``: the modality order, the preprocessing settings the inputs must have
  gone through (as fusionsearch's cache applies them with MONAI), the input shape, the models;
- ``predict.py``: loads the programs and prints each preprocessed sample's class probabilities,
  the mean over the folds' models (as ``fusionsearch predict`` does);
- ``MODEL_CARD.md``: data, mask per fold, protocol, held-out metrics with 95 % intervals,
  intended use and limits.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch

from fusionsearch import storage
from fusionsearch.data.preprocess import build_transforms
from fusionsearch.errors import UserError
from fusionsearch.model.checkpoint import load_model
from fusionsearch.report.data import load_evaluation
from fusionsearch.report.predict import FoldModel, fold_models
from fusionsearch.search.experiment import read_run
from fusionsearch.settings import to_dict

log = logging.getLogger(__name__)

#: Bump when the folder's layout changes.
EXPORT_FORMAT = 1

PREDICT_PY = '''"""Predict with this exported fusionsearch model: plain PyTorch and NumPy, no fusionsearch.

    python predict.py SAMPLE.npy [SAMPLE.npy ...]

Each .npy is one preprocessed sample, an array (modalities, D, H, W) made as preprocessing.json
says. Prints each sample's class probabilities: the mean over the folds' models. In Python:

    from predict import load, probabilities
    models = load()
    probabilities(models, batch)  # batch: float32 tensor (B, modalities, D, H, W)
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent


def load() -> list:
    """The folds' networks, ready to call."""
    spec = json.loads((HERE / "preprocessing.json").read_text())
    return [torch.export.load(HERE / model["file"]).module() for model in spec["models"]]


@torch.no_grad()
def probabilities(models: list, batch: torch.Tensor) -> torch.Tensor:
    """Class probabilities (B, classes) of ``batch``: the mean of the models' softmax."""
    return torch.stack([model(batch).softmax(1) for model in models]).mean(0)


if __name__ == "__main__":
    batch = torch.from_numpy(np.stack([np.load(path) for path in sys.argv[1:]]).astype(np.float32))
    for path, row in zip(sys.argv[1:], probabilities(load(), batch)):
        print(path, " ".join(f"{p:.6f}" for p in row.tolist()))
'''


def export(
    experiment_dir: str, out: str | os.PathLike, *, fold: int | None = None, folds: bool = False
) -> Path:
    """Write the export folder of the search at ``experiment_dir`` to ``out`` (which must not exist
    or be empty); returns it. The models: as :func:`~fusionsearch.report.predict.fold_models`
    chooses them (the final model when there is one)."""
    run = read_run(experiment_dir)
    if run.settings is None:
        raise UserError(
            f"the search {experiment_dir} trained {run.trainable}: its models are not fusionsearch's"
        )
    models = fold_models(experiment_dir, fold, folds)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"--out {out} exists and is not empty; choose a new folder (nothing was overwritten)")
    out.mkdir(parents=True, exist_ok=True)
    preprocess = run.settings.data.preprocess
    modalities = list(
        run.metadata.get("modalities") or [f"modality{i}" for i in range(run.settings.model.modalities)]
    )
    example = torch.zeros(2, len(modalities), *preprocess.spatial_shape)
    batch = torch.export.Dim("batch", min=1, max=4096)
    files = []
    for model in models:
        with storage.local_copy(model.checkpoint) as folder:
            network = load_model(folder).eval()
        program = torch.export.export(network, (example,), dynamic_shapes=({0: batch},))
        files.append({"fold": model.fold, "mask": model.mask, "file": f"{model.name}.pt2"})
        torch.export.save(program, out / files[-1]["file"])
    spec = {
        "format_version": EXPORT_FORMAT,
        "modalities": modalities,
        "input": {"shape": [len(modalities), *preprocess.spatial_shape], "dtype": "float32"},
        "classes": run.settings.model.num_classes,
        "preprocess": to_dict(preprocess),
        "preprocessing": (
            "each modality read from NIfTI and reoriented to the axis codes 'orientation'; the first "
            "resampled to 'spacing' mm when set, the others onto its grid; stacked in the order of "
            "'modalities'; cropped to the foreground when 'crop_foreground'; cropped or padded "
            "symmetrically to 'shape'; each channel normalised to zero mean and unit variance over "
            "its non-zero voxels; stored as 'dtype', given to the networks as float32"
        ),
        "transforms": [type(t).__name__ for t in build_transforms(modalities, preprocess).transforms],
        "models": files,
        "torch": torch.__version__,
    }
    (out / "preprocessing.json").write_text(json.dumps(spec, indent=2))
    (out / "predict.py").write_text(PREDICT_PY)
    (out / "MODEL_CARD.md").write_text(model_card(experiment_dir, run, models, spec))
    log.info("exported %d model(s) of %s to %s", len(models), experiment_dir, out)
    return out


def model_card(experiment_dir: str, run, models: list[FoldModel], spec: dict) -> str:
    """The export's model card (Markdown)."""
    evaluation = load_evaluation(experiment_dir)
    search = run.metadata.get("search") or {}
    chosen = next((i for i in evaluation.uncertainty.intervals if i["method"] == "chosen"), None)
    held_out = "not available"
    if chosen:
        held_out = (
            f"accuracy {chosen['accuracy']:.3f} (95 % CI {chosen['accuracy_low']:.3f}-"
            f"{chosen['accuracy_high']:.3f}), AUC {chosen['auc']:.3f} (95 % CI {chosen['auc_low']:.3f}-"
            f"{chosen['auc_high']:.3f}), over {chosen['n']} held-out test subjects pooled across folds"
        )
    model = run.settings.model
    final = models[0].final
    masks = f"{final.mask}" if final else ", ".join(f"fold {m.fold}: {m.mask}" for m in models)
    points = "the final model's fusion mask" if final else "each fold's chosen fusion mask"
    combined = (
        "" if final else "\nThe prediction is the mean of the folds' class probabilities (`predict.py`)."
    )
    training = (
        final.describe() if final else "Each fold's model was trained on its fold's training part only."
    )
    return f"""# Model card: {evaluation.name}

**Model.** A multi-stream 3D ResNet-{model.depth} (width {model.width:g}), one stream per
modality ({", ".join(spec["modalities"])}), fused by {model.fusion} modules at the points of
{points} ({masks}), the streams' logits averaged; {spec["classes"]} classes.{combined}

**Data.** Trained on the manifest {run.metadata.get("manifest", "(not recorded)")}, preprocessed as
`preprocessing.json` says (input {spec["input"]["shape"]}).

**How the configuration was chosen.** {run.searcher} search, {search.get("folds", "?")}-fold protocol
(train, validation and test parts per fold; the mask selected on validation subjects only),
control {search.get("control", "?")}, false-accept rate alpha {search.get("alpha", "?")}. {training}

**Held-out performance (chosen configuration).** {held_out}. Full report: the experiment's
`report/report.html`.

**Intended use.** Research on the dataset's population and acquisition: comparing fusion
configurations, and predictions on new subjects of the same kind. Not a medical device; not
validated for clinical decisions.

**Limits.** The held-out figures hold for subjects like the test parts' (same sites, scanners,
protocols and label definition); other cohorts need their own evaluation (`fusionsearch
predict` with labels gives one). The inputs must be preprocessed exactly as
`preprocessing.json` says; with no fixed spacing, scans must have the training scans' voxel
size. Small cohorts give wide intervals: read the interval, not the point estimate.
"""
