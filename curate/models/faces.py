"""MTCNN face detection (Zhang et al. 2016) with the weights facenet-pytorch 2.6.0 ships.

The three networks' weights are vendored in ``curate/models/faces/`` (MIT, file hashes and
source in its README); they are plain state dicts, loaded with ``weights_only=True``. The
networks and the cascade are written here from the published method and facenet-pytorch's
choices, matched exactly (tests compare against facenet-pytorch itself):

- input: RGB ``uint8`` HWC as PIL decodes it, as float, normalised ``(x - 127.5) * 0.0078125``;
- pyramid: ``m = 12 / min_face_size``, scales ``m * factor**k`` while ``min(h, w) * scale >=
  12``; each level resized to ``(int(h * s + 1), int(w * s + 1))`` with area interpolation
  (``F.interpolate(mode="area")``); crops for RNet (24x24) and ONet (48x48) likewise;
- PNet: cells with ``p >= thresholds[0]`` give boxes ``floor((2 * (col, row) + 1) / s)`` to
  ``floor((2 * (col, row) + 12) / s)``; NMS (IoU 0.5) per image and scale, then NMS 0.7 per
  image; box regression (``x + dx * w``, w without +1); square (``rerec``);
- crops: box corners truncated to int, clipped to [1, w] / [1, h], pixels ``y - 1 : ey``
  (no zero padding); RNet keeps ``p > thresholds[1]``, NMS 0.7, regression (w + 1), square;
  ONet keeps ``p > thresholds[2]``, regression, then NMS 0.7 by intersection over the smaller
  box ("Min", areas with +1). Boxes are in pixels, float, not clipped to the image.

Batched: images of one size go through PNet together per scale; the RNet and ONet crops of
every image of a call go through in batches of ``batch_size``. Results are per image and do
not depend on how images are batched. One departure: a box whose crop is empty (wholly
outside the image) is dropped; facenet-pytorch would misalign its crops and scores.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812
from torchvision.ops import batched_nms

from curate.models.weights import file_sha256

DIR = Path(__file__).parent / "faces"
FILES = {"pnet": "pnet.pt", "rnet": "rnet.pt", "onet": "onet.pt"}
SOURCE = "facenet-pytorch 2.6.0 wheel (PyPI): facenet_pytorch/data/{pnet,rnet,onet}.pt"
LICENCE = "MIT (facenet-pytorch, (c) 2019 Timothy Esler; LICENSE-facenet-pytorch)"
_NETS: dict[str, Any] = {}


def _flat(x: torch.Tensor) -> torch.Tensor:
    # the original (Caffe/TF) weights flatten in (W, H, C) order
    return x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)


class PNet(nn.Module):
    """12x12 proposal net, fully convolutional: (reg [N,4,h,w], prob [N,2,h,w])."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.conv4_1, self.conv4_2 = nn.Conv2d(32, 2, 1), nn.Conv2d(32, 4, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.conv4_2(x), torch.softmax(self.conv4_1(x), dim=1)


class RNet(nn.Module):
    """24x24 refine net: (reg [N,4], prob [N,2])."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1, self.dense5_2 = nn.Linear(128, 2), nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu4(self.dense4(_flat(self.prelu3(self.conv3(x)))))
        return self.dense5_2(x), torch.softmax(self.dense5_1(x), dim=1)


class ONet(nn.Module):
    """48x48 output net: (reg [N,4], landmarks [N,10], prob [N,2])."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1, self.dense6_2 = nn.Linear(256, 2), nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu5(self.dense5(_flat(self.prelu4(self.conv4(x)))))
        return self.dense6_2(x), self.dense6_3(x), torch.softmax(self.dense6_1(x), dim=1)


def load_nets(device: str = "cpu") -> tuple[PNet, RNet, ONet]:
    """The three networks with the vendored weights, eval mode, on ``device`` (cached)."""
    if device not in _NETS:
        nets = []
        for name, cls in (("pnet", PNet), ("rnet", RNet), ("onet", ONet)):
            net = cls()
            net.load_state_dict(torch.load(DIR / FILES[name], map_location="cpu",
                                           weights_only=True))
            nets.append(net.eval().to(device))
        _NETS[device] = tuple(nets)
    return _NETS[device]


def describe() -> dict[str, Any]:
    """Files, hashes, source and licence of the weights (the stage's ``model`` step)."""
    return {"files": {k: f"curate/models/faces/{v}" for k, v in FILES.items()},
            "sha256": {k: file_sha256(DIR / v) for k, v in FILES.items()},
            "source": SOURCE, "licence": LICENCE}


def pick_device(want: str, gpus: float) -> str:
    """``cuda`` when asked for (or ``auto``) and this worker holds a GPU torch can see."""
    if want != "cpu" and gpus > 0 and torch.cuda.is_available():
        return "cuda"
    return "cpu"


def set_threads(n: int) -> None:
    torch.set_num_threads(max(1, n))


# ---------------------------------------------------------------------------- the cascade
def _norm(x: torch.Tensor) -> torch.Tensor:
    return (x - 127.5) * 0.0078125


def _scales(h: int, w: int, min_face_size: int, factor: float) -> list[float]:
    m = 12.0 / min_face_size
    minl, scale, out = min(h, w) * m, m, []
    while minl >= 12:
        out.append(scale)
        scale, minl = scale * factor, minl * factor
    return out


def _rerec(b: torch.Tensor) -> torch.Tensor:
    """Square each box on its centre, side = the longer side (``b`` changed in place)."""
    h, w = b[:, 3] - b[:, 1], b[:, 2] - b[:, 0]
    side = torch.maximum(w, h)
    b[:, 0] = b[:, 0] + w * 0.5 - side * 0.5
    b[:, 1] = b[:, 1] + h * 0.5 - side * 0.5
    b[:, 2] = b[:, 0] + side
    b[:, 3] = b[:, 1] + side
    return b


def _regress(b: torch.Tensor, reg: torch.Tensor) -> torch.Tensor:
    """Box regression with widths ``x2 - x1 + 1`` (RNet, ONet); ``b`` changed in place."""
    w = b[:, 2] - b[:, 0] + 1
    h = b[:, 3] - b[:, 1] + 1
    b[:, :4] = b[:, :4] + reg[:, :4] * torch.stack([w, h, w, h], dim=1)
    return b


def _nms_min(boxes: np.ndarray, scores: np.ndarray, owner: np.ndarray,
             thresh: float) -> np.ndarray:
    """Greedy NMS per image by intersection over the smaller box (areas with +1), highest
    score first; a box overlapping a kept one by more than ``thresh`` is dropped."""
    keep: list[int] = []
    for img in np.unique(owner):
        idx = np.flatnonzero(owner == img)
        b = boxes[idx].astype(np.float64)
        area = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
        order = list(np.argsort(scores[idx])[::-1])
        while order:
            i, rest = order[0], np.array(order[1:], int)
            keep.append(int(idx[i]))
            if not rest.size:
                break
            iw = np.maximum(0.0, np.minimum(b[i, 2], b[rest, 2]) -
                            np.maximum(b[i, 0], b[rest, 0]) + 1)
            ih = np.maximum(0.0, np.minimum(b[i, 3], b[rest, 3]) -
                            np.maximum(b[i, 1], b[rest, 1]) + 1)
            over = iw * ih / np.minimum(area[i], area[rest])
            order = list(rest[over <= thresh])
    return np.array(sorted(keep, key=lambda k: -scores[k]), np.int64)


def _crops(imgs: list[torch.Tensor], boxes: torch.Tensor, owner: torch.Tensor,
           size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``size``x``size`` normalised crops of ``boxes`` and the mask of boxes that had
    pixels (corners truncated, clipped to [1, w] / [1, h], rows ``y - 1 : ey``)."""
    b = boxes[:, :4].trunc().int().cpu().numpy()
    own = owner.cpu().numpy()
    out, ok = [], np.zeros(len(b), bool)
    for k, (x, y, ex, ey) in enumerate(b):
        img = imgs[own[k]]
        h, w = img.shape[1:]
        x, y, ex, ey = max(x, 1), max(y, 1), min(ex, w), min(ey, h)
        if ey > y - 1 and ex > x - 1:
            crop = img[:, y - 1:ey, x - 1:ex].unsqueeze(0).float()
            out.append(F.interpolate(crop, size=(size, size), mode="area"))
            ok[k] = True
    if not out:
        return torch.zeros(0, 3, size, size, device=boxes.device), torch.from_numpy(ok)
    return _norm(torch.cat(out)), torch.from_numpy(ok)


def _run(net: nn.Module, x: torch.Tensor, batch: int) -> tuple[torch.Tensor, ...]:
    outs = [net(x[i:i + batch]) for i in range(0, len(x), batch)]
    return tuple(torch.cat(v) for v in zip(*outs))


def _proposals(imgs: list[torch.Tensor], pnet: PNet, min_face_size: int, thresh: float,
               factor: float, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """PNet over each image's pyramid (images of one size batched): boxes [n, 9] (x1, y1,
    x2, y2, score, 4 regressions) and each box's image index, after NMS 0.5 per image and
    scale and 0.7 per image."""
    by_size: dict[tuple[int, int], list[int]] = {}
    for i, img in enumerate(imgs):
        by_size.setdefault(tuple(img.shape[1:]), []).append(i)
    boxes, owners = [], []
    for (h, w), members in by_size.items():
        for start in range(0, len(members), batch):
            part = members[start:start + batch]
            x = torch.stack([imgs[i] for i in part]).float()
            ids = torch.tensor(part, device=x.device)
            for s in _scales(h, w, min_face_size, factor):
                level = _norm(F.interpolate(x, size=(int(h * s + 1), int(w * s + 1)),
                                            mode="area"))
                reg, prob = pnet(level)
                b, o = _cells(reg, prob[:, 1], s, thresh)
                pick = batched_nms(b[:, :4], b[:, 4], o, 0.5)
                boxes.append(b[pick])
                owners.append(ids[o[pick]])
    if not boxes:
        dev = imgs[0].device if imgs else "cpu"
        return torch.zeros(0, 9, device=dev), torch.zeros(0, dtype=torch.long, device=dev)
    b, o = torch.cat(boxes), torch.cat(owners)
    pick = batched_nms(b[:, :4], b[:, 4], o, 0.7)
    b, o = b[pick], o[pick]
    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    q = b[:, :4] + b[:, 5:9] * torch.stack([w, h, w, h], dim=1)
    return _rerec(torch.cat([q, b[:, 4:5]], dim=1)), o


def _cells(reg: torch.Tensor, prob: torch.Tensor, scale: float,
           thresh: float) -> tuple[torch.Tensor, torch.Tensor]:
    """PNet's output cells at or over ``thresh`` as image-space boxes (stride 2, cell 12)."""
    mask = prob >= thresh
    where = mask.nonzero()  # (image, row, col), row-major
    xy = where[:, 1:].flip(1).to(reg.dtype)
    q1 = ((2 * xy + 1) / scale).floor()
    q2 = ((2 * xy + 12) / scale).floor()
    r = reg.permute(1, 0, 2, 3)[:, mask].permute(1, 0)
    return torch.cat([q1, q2, prob[mask].unsqueeze(1), r], dim=1), where[:, 0]


@torch.inference_mode()
def detect(images: list[np.ndarray], nets: tuple[PNet, RNet, ONet], *, min_face_size: int = 20,
           thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7), factor: float = 0.709,
           batch_size: int = 64, device: str = "cpu"
           ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Faces in each ``images[i]`` (RGB ``uint8`` HWC): ``(boxes [n, 4] float32 pixels x1, y1,
    x2, y2; scores [n] float32)``, highest score first."""
    pnet, rnet, onet = nets
    empty = (np.zeros((0, 4), np.float32), np.zeros(0, np.float32))
    if not images:
        return []
    imgs = [torch.from_numpy(np.array(a, np.uint8, copy=True)).to(device).permute(2, 0, 1)
            for a in images]
    boxes, owner = _proposals(imgs, pnet, min_face_size, thresholds[0], factor, batch_size)
    for stage, net, size in ((1, rnet, 24), (2, onet, 48)):
        if not len(boxes):
            break
        crops, ok = _crops(imgs, boxes, owner, size)
        ok = ok.to(boxes.device)
        boxes, owner = boxes[ok], owner[ok]
        out = _run(net, crops, 512)
        reg, score = out[0], out[-1][:, 1]
        keep = score > thresholds[stage]
        boxes = torch.cat([boxes[keep, :4], score[keep].unsqueeze(1)], dim=1)
        owner, reg = owner[keep], reg[keep]
        if stage == 1:
            pick = batched_nms(boxes[:, :4], boxes[:, 4], owner, 0.7)
            boxes = _rerec(_regress(boxes[pick], reg[pick]))
            owner = owner[pick]
        else:
            boxes = _regress(boxes, reg)
            pick = _nms_min(boxes[:, :4].cpu().numpy(), boxes[:, 4].cpu().numpy(),
                            owner.cpu().numpy(), 0.7)
            boxes, owner = boxes[torch.from_numpy(pick).to(boxes.device)], \
                owner[torch.from_numpy(pick).to(boxes.device)]
    if len(boxes) and boxes.shape[1] != 5:  # RNet found nothing
        boxes = boxes[:0]
    b = boxes.cpu().numpy().astype(np.float32)
    own = owner.cpu().numpy()
    out = []
    for i in range(len(images)):
        mine = b[own == i] if len(b) else empty[0]
        out.append((mine[:, :4].copy(), mine[:, 4].copy()) if len(mine) else empty)
    return out
