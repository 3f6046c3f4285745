"""Evaluation: an image's map and score depend on the image and the model only.

With test-time FLM on (the default, Sec. 3.4), the masks are fixed per model, so the
batch size, the companions and their order change nothing. On CPU, oneDNN picks its
convolution blocking by batch size, so maps of different batch sizes agree to float32
rounding (relative 1e-6); same batch size in another order or with other companions:
bitwise.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mrkd_core.data import get_dataset
from mrkd_core.device import place_model
from mrkd_core.evaluate import evaluate
from mrkd_core.model import build_mrkd
from tests.tiny import TINY_CFG, tiny_category

torch.set_num_threads(2)
CFG = TINY_CFG


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    root = tiny_category(tmp_path_factory, "eval-data", n_train=1, n_test_good=8, n_test_defect=8, seed=3)
    return get_dataset("folder").test_samples(str(root), "obj_disc")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return place_model(build_mrkd(CFG), CFG, torch.device("cpu")).eval()


def _run(model, samples, batch_size):
    result = evaluate(model, CFG.replace(eval_batch_size=batch_size), samples, keep_maps=True)
    return np.array([s["score"] for s in result.scores]), result.maps, result.metrics


def test_scores_and_maps_do_not_depend_on_batch_size_order_or_companions(model, samples):
    assert len(samples) == 16
    scores, maps, metrics = _run(model, samples, 1)
    for b in (3, 16):
        s_b, m_b, metrics_b = _run(model, samples, b)
        np.testing.assert_allclose(s_b, scores, rtol=1e-6, atol=0)
        np.testing.assert_allclose(m_b, maps, rtol=1e-6, atol=0)
        assert metrics_b["image_auroc"] == metrics["image_auroc"]
    # another order, other companions: the same batch size gives the same bits
    s16, m16, _ = _run(model, samples, 16)
    order = np.random.default_rng(0).permutation(16)
    s_perm, m_perm, _ = _run(model, [samples[i] for i in order], 16)
    np.testing.assert_array_equal(s_perm, s16[order])
    np.testing.assert_array_equal(m_perm, m16[order])
    s7, m7, _ = _run(model, samples[6:13], 7)  # images 6-8 first among 6 others
    s7b, m7b, _ = _run(model, samples[2:9], 7)  # ... and last, among 4 other ones
    np.testing.assert_array_equal(m7[0:3], m7b[4:7])
    np.testing.assert_allclose(s7, s16[6:13], rtol=1e-6, atol=0)
    np.testing.assert_allclose(s7b, s16[2:9], rtol=1e-6, atol=0)
