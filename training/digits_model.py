"""The digits classifier (a small CNN) and its safe on-disk format (safetensors + JSON)."""

from __future__ import annotations

import json
from pathlib import Path

MODEL_FILE = "model.safetensors"
MODEL_META = "model.json"
KIND = "digits_cnn"


def build_cnn(side: int, channels: list[int], hidden: list[int], classes: int):
    """3x3 convolutions with ReLU, one 2x2 max-pool, then dense layers to the class logits."""
    import torch.nn as nn

    layers: list = []
    prev = 1
    for width in channels:
        layers += [nn.Conv2d(prev, width, kernel_size=3, padding=1), nn.ReLU()]
        prev = width
    layers += [nn.MaxPool2d(2), nn.Flatten()]
    prev = prev * (side // 2) ** 2
    for width in hidden:
        layers += [nn.Linear(prev, width), nn.ReLU()]
        prev = width
    layers.append(nn.Linear(prev, classes))
    return nn.Sequential(*layers)


class DigitsModel:
    """The CNN plus what it needs to be used: pixel scale, image side, classes, architecture."""

    def __init__(self, net, *, side: int, scale: float, channels: list[int], hidden: list[int],
                 classes: int) -> None:
        self.net, self.side, self.scale = net, side, scale
        self.channels, self.hidden, self.classes = channels, hidden, classes

    def predict(self, images):
        """Class ids of raw images ``[n, H, W]``, ``[n, 1, H, W]`` or flat ``[n, H*W]`` (as
        scikit-learn's ``digits.data``), grey levels as stored."""
        import torch

        x = torch.as_tensor(images, dtype=torch.float32)
        side, given = self.side, list(x.shape)
        if x.dim() == 2 and x.shape[1] == side * side:
            x = x.reshape(-1, side, side)
        if x.dim() == 3:
            x = x.unsqueeze(1)
        if x.dim() != 4 or tuple(x.shape[1:]) != (1, side, side):
            raise ValueError(f"images: shape {given} is not a batch of {side}x{side} grey images; "
                             f"pass [n, {side}, {side}], [n, 1, {side}, {side}] or [n, {side * side}] "
                             f"(one image: images[None])")
        with torch.no_grad():
            return self.net.eval()(x / self.scale).argmax(dim=1)

    def save(self, out_dir: Path) -> None:
        """Weights as safetensors (no pickle), the rest as JSON."""
        from safetensors.torch import save_file

        save_file({k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()},
                  str(out_dir / MODEL_FILE))
        (out_dir / MODEL_META).write_text(json.dumps({
            "kind": KIND, "side": self.side, "scale": self.scale, "channels": self.channels,
            "hidden": self.hidden, "classes": self.classes}, indent=2))

    @classmethod
    def load(cls, model_dir: Path) -> "DigitsModel":
        """Load from a directory whose hashes the caller has already verified."""
        from safetensors.torch import load_file

        meta = json.loads((model_dir / MODEL_META).read_text())
        if meta.get("kind") != KIND:
            raise ValueError(f"{model_dir}: model kind {meta.get('kind')!r}, expected {KIND!r}")
        net = build_cnn(meta["side"], meta["channels"], meta["hidden"], meta["classes"])
        net.load_state_dict(load_file(str(model_dir / MODEL_FILE)))
        return cls(net, side=meta["side"], scale=meta["scale"], channels=meta["channels"],
                   hidden=meta["hidden"], classes=meta["classes"])
