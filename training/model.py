"""The ETA regressor and its safe on-disk format (safetensors + a JSON description)."""

from __future__ import annotations

import json
from pathlib import Path

MODEL_FILE = "model.safetensors"
MODEL_META = "model.json"


def build_mlp(in_dim: int, hidden: list[int]):
    import torch.nn as nn

    layers: list = []
    prev = in_dim
    for width in hidden:
        layers += [nn.Linear(prev, width), nn.ReLU()]
        prev = width
    layers.append(nn.Linear(prev, 1))
    return nn.Sequential(*layers)


class EtaModel:
    """MLP plus the feature/label normalization learned from the training split."""

    def __init__(self, net, x_mean, x_std, y_mean: float, y_std: float, features: list[str]):
        self.net, self.x_mean, self.x_std = net, x_mean, x_std
        self.y_mean, self.y_std, self.features = y_mean, y_std, features

    def predict(self, x):
        import torch

        with torch.no_grad():
            z = self.net((x - self.x_mean) / self.x_std).squeeze(-1)
        return z * self.y_std + self.y_mean

    def save(self, out_dir: Path, hidden: list[int]) -> None:
        """Weights as safetensors (no pickle), normalization and architecture as JSON."""
        from safetensors.torch import save_file

        tensors = {f"net.{k}": v.detach().contiguous() for k, v in self.net.state_dict().items()}
        tensors["norm.x_mean"], tensors["norm.x_std"] = self.x_mean.contiguous(), self.x_std.contiguous()
        save_file(tensors, str(out_dir / MODEL_FILE))
        (out_dir / MODEL_META).write_text(json.dumps({
            "kind": "eta_mlp", "features": self.features, "hidden": hidden,
            "y_mean": self.y_mean, "y_std": self.y_std,
        }, indent=2))

    @classmethod
    def load(cls, model_dir: Path) -> "EtaModel":
        """Load from a directory whose hashes the caller has already verified."""
        from safetensors.torch import load_file

        meta = json.loads((model_dir / MODEL_META).read_text())
        if meta.get("kind") != "eta_mlp":
            raise ValueError(f"{model_dir}: model kind {meta.get('kind')!r}, expected 'eta_mlp'")
        tensors = load_file(str(model_dir / MODEL_FILE))
        net = build_mlp(len(meta["features"]), meta["hidden"])
        net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
        return cls(net, tensors["norm.x_mean"], tensors["norm.x_std"], meta["y_mean"], meta["y_std"],
                   meta["features"])
