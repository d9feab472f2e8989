"""Inference: top-k across levels, masks pasted into window boxes, COCO output, options."""

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from torch import nn

from fastmask_cli import FastMaskError, ParameterError, Proposer
from support import draw_scene, tiny_model


class FixedScores(nn.Module):
    """Stands in for the score branch: -10 everywhere but +high at chosen (level, row, col)."""

    def __init__(self, hot: dict[int, list[tuple[int, int, float]]]):
        super().__init__()
        self.hot, self.calls = hot, 0

    def forward(self, level: torch.Tensor) -> torch.Tensor:
        n, _, h, w = level.shape
        scores = torch.full((n, h - 9, w - 9), -10.0)
        for y, x, value in self.hot.get(self.calls % 4, []):
            scores[:, y, x] = value
        self.calls += 1
        return scores


def full_mask_model(hot):
    """A tiny model whose score branch is `FixedScores` (Python state, so it runs in PyTorch, not exported)."""
    model = tiny_model(scales=4)
    model.head.score = FixedScores(hot)
    nn.init.zeros_(model.head.mask.fc2.weight)
    nn.init.constant_(model.head.mask.fc2.bias, 20.0)  # every decoded mask fills its window
    return model


def test_top_k_is_taken_across_levels_and_masks_fill_their_windows():
    # levels of the tiny two-stream model at 4 scales: strides 16, 24, 32, 48
    hot = {0: [(6, 7, 3.0)], 2: [(3, 4, 5.0)], 3: [(2, 3, 4.0)], 1: [(4, 6, 1.0)]}
    proposer = Proposer(full_mask_model(hot), device="cpu", backend="torch", top_k=3, size=128, nms="none")
    image = draw_scene(96, 128)
    proposals = proposer.propose(image)
    assert len(proposals) == 3
    assert proposals.strides.tolist() == [32, 48, 16]  # best three of four, across levels
    assert np.allclose(proposals.scores, torch.sigmoid(torch.tensor([5.0, 4.0, 3.0])).numpy())
    # window (y, x) at stride s covers [(x-5)s, (x+5)s) x [(y-5)s, (y+5)s), clipped to the 128x96 image
    expected = [[0, 0, 128, 96], [0, 0, 128, 96], [32, 16, 128 - 32, 96 - 16]]
    assert proposals.boxes.tolist() == expected
    masks = proposals.masks()
    assert masks.shape == (3, 96, 128)
    assert masks[2].sum() == 96 * 80 and masks[2, 16:, 32:].all()


def test_boxes_come_back_in_original_image_coordinates():
    hot = {0: [(6, 7, 3.0)]}
    proposer = Proposer(full_mask_model(hot), device="cpu", backend="torch", top_k=1, size=128, nms="none")
    proposals = proposer.propose(draw_scene(192, 256))  # network sees it at half size
    assert proposals.boxes.tolist() == [[64, 32, 192, 160]]
    assert (proposals.height, proposals.width) == (192, 256)


def test_batched_images_of_different_sizes_never_propose_padding():
    hot = {0: [(8, 0, 9.0)]}  # starts at y = 48: inside the tall image, in the short one's padding
    proposer = Proposer(full_mask_model(hot), device="cpu", backend="torch", top_k=5, size=128, nms="none")
    tall, short = draw_scene(128, 128), draw_scene(48, 128)
    results = proposer.propose_batch([tall, short])
    assert results[0].scores[0] == pytest.approx(torch.sigmoid(torch.tensor(9.0)).item())
    assert all(s < 0.5 for s in results[1].scores)
    assert results[1].masks().shape[1:] == (48, 128)


def test_output_loads_in_pycocotools(tmp_path):
    proposer = Proposer(tiny_model(), device="cpu", top_k=20)
    image = draw_scene()
    proposals = proposer.propose(image)
    assert len(proposals) == 20 and np.all(np.diff(proposals.scores) <= 0)
    assert np.all((proposals.scores > 0) & (proposals.scores < 1))
    gt = COCO()
    gt.dataset = {"images": [{"id": 7, "height": 96, "width": 128}], "annotations": [], "categories": [{"id": 1}]}
    gt.createIndex()
    results = gt.loadRes(proposals.to_coco(7))
    assert len(results.anns) == 20
    ann = results.anns[1]
    assert ann["category_id"] == 1 and isinstance(ann["segmentation"]["counts"], str)
    assert len(ann["bbox"]) == 4


def test_suppression_removes_near_duplicates():
    hot = {0: [(6, 7, 3.0), (6, 8, 2.0)], 2: [(3, 4, 1.0)]}  # neighbouring windows overlap heavily
    plain = Proposer(full_mask_model(hot), device="cpu", backend="torch", top_k=3, size=128).propose(draw_scene(96, 128))
    for kind in ("box", "mask"):
        nms = Proposer(full_mask_model(hot), device="cpu", backend="torch", top_k=3, size=128, nms=kind, nms_iou=0.5, nms_mode="drop")
        kept = nms.propose(draw_scene(96, 128))
        assert len(kept) < len(plain)
        assert kept.scores[0] == plain.scores[0]


def test_demoted_duplicates_go_behind_every_distinct_proposal(monkeypatch):
    # a pool of six candidates (the three hot windows and three cold ones) isolates the demotion itself
    monkeypatch.setattr(Proposer, "candidates", property(lambda self: 2 * self.top_k))
    hot = {0: [(6, 7, 3.0), (6, 8, 2.0)], 2: [(3, 4, 1.0)]}  # mask IoU: second with first 0.83, third with first 0.63
    plain = Proposer(full_mask_model(hot), device="cpu", backend="torch", top_k=3, size=128, nms="none").propose(draw_scene(96, 128))
    demoted = Proposer(full_mask_model(hot), device="cpu", backend="torch", top_k=3, size=128, nms="mask", nms_iou=0.7,
                       nms_mode="demote").propose(draw_scene(96, 128))
    assert len(demoted) == len(plain)  # nothing dropped: the top-k set is the same
    assert sorted(r["counts"] for r in demoted.rles) == sorted(r["counts"] for r in plain.rles)
    assert demoted.rles[0] == plain.rles[0] and demoted.rles[1] == plain.rles[2] and demoted.rles[2] == plain.rles[1]
    assert list(demoted.scores) == sorted(demoted.scores, reverse=True)  # scores give the new order (COCOeval sorts by them)
    assert demoted.scores[2] < demoted.scores[1] and demoted.scores[0] == plain.scores[0]


def test_option_errors_are_user_errors():
    with pytest.raises(FastMaskError, match="fp16"):
        Proposer(tiny_model(), device="cpu", precision="fp16")
    with pytest.raises(FastMaskError, match="precision"):
        Proposer(tiny_model(), device="cpu", precision="int4")
    with pytest.raises(ParameterError, match="top_k must be at least 1") as error:
        Proposer(tiny_model(), device="cpu", top_k=0)
    assert error.value.named(lambda name: "--" + name.replace("_", "-")) == "--top-k must be at least 1, not 0"
    with pytest.raises(FastMaskError, match="nms"):
        Proposer(tiny_model(), device="cpu", nms="soft")
    with pytest.raises(ParameterError, match="unknown nms_mode 'hide'"):
        Proposer(tiny_model(), device="cpu", nms_mode="hide")


def test_candidate_pool_leaves_room_for_the_next_objects():
    """Each object has several near-duplicate windows: a short list needs at least 100 more candidates."""
    pools = {k: Proposer(tiny_model(), device="cpu", top_k=k).candidates for k in (10, 100, 150, 1000)}
    assert pools == {10: 110, 100: 200, 150: 300, 1000: 1200}
    assert Proposer(tiny_model(), device="cpu", top_k=10, nms="none").candidates == 10


def test_suppression_fills_the_top_k_with_the_next_distinct_candidates():
    hot = {0: [(6, 7, 3.0), (6, 8, 2.0)], 2: [(3, 4, 1.0)]}  # mask IoU: second with first 0.83, third with first 0.63
    plain = Proposer(full_mask_model(hot), device="cpu", backend="torch", top_k=3, size=128, nms="none").propose(draw_scene(96, 128))
    top2 = Proposer(full_mask_model(hot), device="cpu", backend="torch", top_k=2, size=128, nms="mask", nms_iou=0.7).propose(draw_scene(96, 128))
    assert top2.rles == [plain.rles[0], plain.rles[2]]  # the duplicate makes way for the third window


def test_a_variant_shares_the_network_and_proposes_as_a_new_proposer_would():
    model, image = tiny_model(), draw_scene(96, 128)
    base = Proposer(model, device="cpu", top_k=10)
    wider = base.variant(top_k=30, nms="box")
    fresh = Proposer(model, device="cpu", top_k=30, nms="box").propose(image)
    got = wider.propose(image)
    assert wider.model is base.model and base.top_k == 10 and base.nms == "mask"  # the original is untouched
    assert len(got) == len(fresh) and np.array_equal(got.scores, fresh.scores) and got.rles == fresh.rles
    with pytest.raises(ParameterError, match="top_k"):
        base.variant(top_k=0)


def test_score_and_area_filters_apply_after_suppression_and_before_top_k():
    from fastmask_cli.inference.options import parse_area

    image = draw_scene(120, 160, seed=4)
    base = Proposer(tiny_model(), device="cpu", backend="torch", top_k=300)
    everything = base.propose(image)
    assert len(everything) > 20
    score = float(np.median(everything.scores))
    area = float(np.median(everything.areas))
    for changes, keep in (({"min_score": score}, everything.scores >= score),
                          ({"min_area": area}, everything.areas >= area),
                          ({"max_area": area / (120 * 160)}, everything.areas <= area),  # below 1: a fraction of the image
                          ({"min_score": score, "max_area": area}, (everything.scores >= score) & (everything.areas <= area))):
        filtered = base.variant(**changes).propose(image)
        assert [r["counts"] for r in filtered.rles] == [r["counts"] for r, k in zip(everything.rles, keep) if k], changes
        assert base.variant(**changes).settings().items() >= changes.items()  # recorded with the results
        few = base.variant(top_k=5, **changes).propose(image)  # top-k counts what passed
        assert [r["counts"] for r in few.rles] == [r["counts"] for r in filtered.rles[:5]]
    assert "min_score" not in base.settings()
    assert parse_area("1%") == 0.01 and parse_area("0.5") == 0.5 and parse_area("500") == 500
    for text in ("100%", "150%", "0%"):  # a percentage is a fraction: 100% would read as one pixel
        with pytest.raises(ValueError, match="percentage must be between 0 and 100"):
            parse_area(text)
    for bad in ({"max_area": 0.0}, {"min_area": float("nan")}, {"max_area": float("inf")}, {"min_score": float("nan")}):
        with pytest.raises(ParameterError):
            base.variant(**bad)
    assert base.variant(max_area=0.5).settings()["max_area"] == 0.5
    with pytest.raises(ParameterError, match="min_score must be between 0 and 1"):
        base.variant(min_score=1.5)
    with pytest.raises(ParameterError, match="max_area must be above 0"):
        base.variant(max_area=-1)


def test_one_per_pixel_gives_each_pixel_to_the_best_ranked_proposal():
    from fastmask_cli.inference.options import OWN_FRACTION

    image = draw_scene(120, 160, seed=5)
    base = Proposer(tiny_model(), device="cpu", backend="torch", top_k=300)
    overlapping = base.propose(image)
    single = base.variant(one_per_pixel=True, top_k=20).propose(image)
    masks, full = single.masks(), overlapping.masks()
    assert 0 < len(single) <= 20 and masks.sum(axis=0).max() == 1  # no pixel twice
    # each kept proposal is an earlier one's remainder, in the same order, holding at least OWN_FRACTION of it
    origins = [int(np.flatnonzero([(m & f).sum() == m.sum() and f[m].all() for f in full])[0]) for m in masks]
    assert origins == sorted(origins) and len(set(origins)) == len(origins)
    for mask, origin, area, box in zip(masks, origins, single.areas, single.boxes):
        assert area == mask.sum() >= OWN_FRACTION * full[origin].sum()
        ys, xs = np.nonzero(mask)
        assert np.allclose(box, [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1])
    assert single.scores.tolist() == overlapping.scores[origins].tolist()  # scores kept
