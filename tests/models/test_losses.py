"""Partial labels, outside nuclei and pseudo labels."""

from __future__ import annotations

import torch

from nucdata_models.data import LabelSetSpec, target_bits
from nucdata_models.losses import partial_label_loss, pseudo_labels
from nucdata_models.model import BaseModel


def test_partial_labels_keep_mass_inside_candidates():
    torch.manual_seed(0)
    logits = torch.randn(64, 5).requires_grad_()
    candidates = torch.full((64,), 0b00011)  # classes 0 or 1
    optimiser = torch.optim.SGD([logits], lr=32.0)  # the loss is a mean over 64 nuclei
    outside_before = logits.softmax(1)[:, 2:].sum(1).mean().item()
    inside_split = []
    for _ in range(30):
        loss, count = partial_label_loss(logits, candidates)
        optimiser.zero_grad()
        loss.backward()
        # the gradient never pushes probability towards a non-candidate class
        p = logits.softmax(1).detach()
        assert bool((logits.grad[:, 2:] >= 0).all()) and bool(torch.isfinite(logits.grad).all())
        optimiser.step()
        inside_split.append(p[:, 0] / p[:, :2].sum(1))
    assert int(count) == 64
    assert logits.softmax(1)[:, 2:].sum(1).mean().item() < outside_before / 5
    # inside the candidates the favourite is never changed by the loss (it only sharpens)
    assert bool(((inside_split[0] > 0.5) == (inside_split[-1] > 0.5)).all())


def test_one_candidate_is_plain_cross_entropy():
    logits = torch.randn(10, 4)
    labels = torch.randint(0, 4, (10,))
    loss, _ = partial_label_loss(logits, 1 << labels)
    assert torch.allclose(loss, torch.nn.functional.cross_entropy(logits, labels))


def test_no_information_gives_no_gradient_and_no_nan():
    logits = torch.randn(8, 4, requires_grad=True)
    bits = torch.tensor([0, 0, 0, 0, 0, 0, 0, 0b0100])
    loss, count = partial_label_loss(logits, bits)
    loss.backward()
    assert int(count) == 1 and bool(torch.isfinite(logits.grad).all())
    assert float(logits.grad[:7].abs().sum()) == 0.0 and float(logits.grad[7].abs().sum()) > 0


def test_outside_nuclei_give_no_gradient_to_their_set():
    torch.manual_seed(0)
    sets = [LabelSetSpec("a", "1", ("x", "y", "z")), LabelSetSpec("b", "1", ("u", "v"))]
    model = BaseModel(sets, "small", 3)
    x = torch.randn(6, 3, 16, 16)
    labels_a = torch.tensor([-2, -2, -2, -2, -2, -2])
    stale = torch.full((6,), 0b011)  # candidates that an outside label must override
    targets_a = target_bits(labels_a, stale)
    assert bool((targets_a == 0).all())
    out = model(x)
    loss_a, count = partial_label_loss(out["a"], targets_a)
    loss_b, _ = partial_label_loss(out["b"], target_bits(torch.tensor([0, 1, 0, 1, -1, -2]), torch.zeros(6, dtype=torch.int64)))
    (loss_a + loss_b).backward()
    assert int(count) == 0
    assert float(model.heads["a"].weight.grad.abs().sum()) == 0.0
    assert float(model.heads["b"].weight.grad.abs().sum()) > 0.0


def test_known_labels_override_candidates():
    labels = torch.tensor([2, -1, -1, -2])
    candidates = torch.tensor([0b001, 0b110, 0, 0b111])
    assert target_bits(labels, candidates).tolist() == [0b100, 0b110, 0, 0]


def test_pseudo_labels_threshold_and_rules():
    probs = torch.tensor([[0.995, 0.005, 0.0], [0.6, 0.4, 0.0], [0.999, 0.001, 0.0],
                          [0.5, 0.499, 0.001], [0.99, 0.01, 0.0], [0.9905, 0.0095, 0.0]])
    every = 0b111
    allowed = torch.tensor([every, every, 0, 0b110, every, every])
    # confident -> class 0; unsure -> none; not allowed (annotated, or outside) -> never;
    # candidates {1, 2}: class 1 has 0.499 unrestricted -> none under "candidates",
    # 0.998 after renormalising -> class 1 under "renormalised"; exactly at the
    # threshold -> none (strictly above is needed); just above -> class 0.
    assert pseudo_labels(probs, allowed, 0.99, "candidates").tolist() == [1, 0, 0, 0, 0, 1]
    assert pseudo_labels(probs, allowed, 0.99, "renormalised").tolist() == [1, 0, 0, 2, 0, 1]
    # the paper's rule: the unrestricted argmax, dropped when it is not allowed
    assert pseudo_labels(probs, torch.tensor([0b010] * 6), 0.99, "unrestricted").tolist() == [0] * 6
    assert pseudo_labels(probs, allowed, 0.99, "unrestricted").tolist() == [1, 0, 0, 0, 0, 1]
    # a pseudo label is always allowed
    torch.manual_seed(0)
    p = torch.randn(500, 5).softmax(1) ** 0.1
    p = p / p.sum(1, keepdim=True)
    c = torch.randint(1, 32, (500,))
    for rule in ("candidates", "renormalised", "unrestricted"):
        b = pseudo_labels(p, c, 0.0, rule)
        assert bool(((b & c) == b).all())
    assert bool((pseudo_labels(p, c, 0.0, "renormalised") != 0).all())


def test_sample_weights_give_a_weighted_mean_over_nuclei_with_a_target():
    torch.manual_seed(1)
    logits = torch.randn(6, 3)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    bits = torch.where(torch.arange(6) < 5, 1 << labels, torch.zeros_like(labels))  # the last has no target
    w = torch.tensor([1.0, 1.0, 1.0, 3.0, 0.0, 9.0])
    loss, count = partial_label_loss(logits, bits, sample_weight=w)
    each = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    assert int(count) == 5
    assert torch.allclose(loss, (each[:5] * w[:5]).sum() / w[:5].sum())
    # equal weights are the plain mean
    assert torch.allclose(partial_label_loss(logits, bits, sample_weight=torch.full((6,), 2.0))[0],
                          partial_label_loss(logits, bits)[0])


def test_source_balance_weights_give_every_dataset_the_same_share():
    from nucdata_models.train import source_balance_weights

    dataset = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 2, 2, 2])
    targets = torch.tensor([1, 1, 2, 1, 1, 0, 4, 4, 1, 1, 1])  # nucleus 5 has no target in the set
    train = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 9])  # nucleus 10 is held out
    w = source_balance_weights(targets, dataset, train)
    member = torch.zeros(11, dtype=torch.bool)
    member[train] = True
    member &= targets != 0
    assert float(w[~member].abs().sum()) == 0.0
    sums = [float(w[dataset == d].sum()) for d in range(3)]
    assert sums == [sums[0]] * 3 and abs(float(w[member].mean()) - 1.0) < 1e-6


def test_foreign_balance_keeps_own_annotations_at_full_weight():
    from nucdata_models.train import source_balance_weights

    dataset = torch.tensor([0, 0, 0, 1, 1, 1, 1, 2, 2])
    targets = torch.tensor([1, 2, 1, 1, 1, 1, 4, 2, 2])
    own = dataset == 0  # the set's own dataset annotated these
    train = torch.arange(9)
    w = source_balance_weights(targets, dataset, train, own)
    assert w[own].tolist() == [1.0, 1.0, 1.0]
    # the foreign datasets share the weight of their 6 nuclei equally: 3 each
    assert abs(float(w[dataset == 1].sum()) - 3.0) < 1e-6 and abs(float(w[dataset == 2].sum()) - 3.0) < 1e-6
