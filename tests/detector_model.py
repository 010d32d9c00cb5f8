"""A small detector with the YOLOv8 head, exported by torch's TorchScript exporter as YOLOv8 is.

Three strides (8, 16, 32), per-stride box (4 x 16 DFL bins) and class branches, the DFL softmax
and its arange 1x1 Conv, the anchor decode (anchors -+ distances, centre and size, times the
stride) and one output [N, 4 + classes, anchors] that joins pixel boxes with sigmoid scores: the
tensor names ('/model.22/Concat_...') and the ops are those of an exported yolov8n. Weights are
seeded; the class branch is scaled so that scores spread over (0, 1) and depend on the image.
"""
from __future__ import annotations

from pathlib import Path

CLASSES = 6
SIZE = 128


def build(path: Path, dynamic_batch: bool = False, seed: int = 0) -> Path:
    import torch
    from torch import nn

    torch.manual_seed(seed)

    def block(cin, cout, stride=1):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.SiLU())

    class DFL(nn.Module):
        def __init__(self, bins=16):
            super().__init__()
            self.bins = bins
            self.conv = nn.Conv2d(bins, 1, 1, bias=False).requires_grad_(False)
            self.conv.weight.data[:] = torch.arange(bins, dtype=torch.float32).view(1, bins, 1, 1)

        def forward(self, x):
            b, _, a = x.shape
            return self.conv(x.view(b, 4, self.bins, a).transpose(2, 1).softmax(1)).view(b, 4, a)

    class Detect(nn.Module):
        def __init__(self, classes, channels, strides):
            super().__init__()
            self.classes, self.outputs, self.strides = classes, classes + 64, strides
            self.cv2 = nn.ModuleList(nn.Sequential(block(c, 32), nn.Conv2d(32, 64, 1)) for c in channels)
            self.cv3 = nn.ModuleList(nn.Sequential(block(c, 32), nn.Conv2d(32, classes, 1)) for c in channels)
            for branch in self.cv3:
                branch[-1].weight.data *= 200.0
                branch[-1].bias.data[:] = -2.0
            self.dfl = DFL()

        def forward(self, features):
            maps = [torch.cat((self.cv2[i](x), self.cv3[i](x)), 1) for i, x in enumerate(features)]
            anchors, strides = [], []
            for x, stride in zip(maps, self.strides):
                h, w = x.shape[2:]
                sy, sx = torch.meshgrid(torch.arange(h, dtype=torch.float32) + 0.5,
                                        torch.arange(w, dtype=torch.float32) + 0.5, indexing="ij")
                anchors.append(torch.stack((sx, sy), -1).view(-1, 2))
                strides.append(torch.full((h * w, 1), float(stride)))
            anchors = torch.cat(anchors).transpose(0, 1).unsqueeze(0)
            strides = torch.cat(strides).transpose(0, 1)
            joined = torch.cat([x.view(maps[0].shape[0], self.outputs, -1) for x in maps], 2)
            box, cls = joined.split((64, self.classes), 1)
            left_top, right_bottom = self.dfl(box).chunk(2, 1)
            x1y1, x2y2 = anchors - left_top, anchors + right_bottom
            boxes = torch.cat(((x1y1 + x2y2) / 2, x2y2 - x1y1), 1) * strides
            return torch.cat((boxes, cls.sigmoid()), 1)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            # Index 22 holds the head, as in yolov8n, so the exported names match.
            self.model = nn.ModuleList([block(3, 16, 2), block(16, 32, 2), block(32, 32, 2), block(32, 48, 2),
                                        block(48, 64, 2)] + [nn.Identity()] * 17
                                       + [Detect(CLASSES, (32, 48, 64), (8, 16, 32))])

        def forward(self, x):
            x = self.model[1](self.model[0](x))
            p3 = self.model[2](x)
            p4 = self.model[3](p3)
            return self.model[22]([p3, p4, self.model[4](p4)])

    net = Net().eval()
    example = torch.rand(1, 3, SIZE, SIZE)
    torch.onnx.export(net, example, str(path), opset_version=13, input_names=["images"], output_names=["output0"],
                      dynamo=False, dynamic_axes={"images": {0: "batch"}, "output0": {0: "batch"}} if dynamic_batch
                      else None)
    return path
