"""Opening committed datasets: readers get URLs only through a manifest that vouches for them.

Petastorm stores its Unischema as a pickle in the Parquet metadata, so opening a dataset
unpickles: only datasets committed by this platform may be opened.
"""

from __future__ import annotations

from dlpipe import commit
from dlpipe.errors import NotCommittedError


def split_url(dataset_manifest: dict, split: str) -> str:
    """``file://`` URL of one split of a committed dataset (refuses anything else)."""
    if dataset_manifest.get("stage") != "datasets" or split not in dataset_manifest["summary"].get("splits", []):
        raise NotCommittedError(
            f"{dataset_manifest.get('id')!r} is not a committed dataset with a {split!r} split; "
            f"pass the manifest id that the dataset stage returned")
    return f"file://{commit.location(dataset_manifest)}/{split}"
