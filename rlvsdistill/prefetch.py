"""``python -m rlvsdistill.prefetch CONFIG``: fill the shared model cache for a run, once, so that its pods, retries
and shards start offline (``HF_HUB_OFFLINE=1``): the config's model at its revision into ``$HF_HUB_CACHE``, and its
Hub dataset (``math500``, ``math_train``), loaded once, into ``$HF_DATASETS_CACHE`` (offline, `datasets` reloads a
dataset only from there). The `prefetch` Job of ``make prefetch-model`` runs it with both on the model-cache PVC.
"""

from __future__ import annotations

import logging
import sys

from .config import read_yaml
from .data import DATASETS, load_problems

logger = logging.getLogger(__name__)


def prefetch(values: dict) -> None:
    """Download the model and load the Hub dataset named in a job config's values."""
    from huggingface_hub import snapshot_download

    model, revision = values["model_name_or_path"], values.get("model_revision")
    logger.info("downloading %s%s", model, f" at {revision}" if revision else "")
    path = snapshot_download(model, revision=revision)
    logger.info("model cached: %s", path)
    dataset = values.get("dataset_name")
    if dataset in DATASETS:
        problems = load_problems(dataset, values.get("dataset_split"))
        logger.info("dataset %s cached: %d problems", dataset, len(problems))


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    [config] = argv if argv is not None else sys.argv[1:]
    prefetch(read_yaml(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
