import numpy as np
import pytest

from minicnn import ops
from minicnn.ops import kernels

skfilters = pytest.importorskip("skimage.filters", reason="scikit-image is the Gabor reference")


@pytest.mark.parametrize("frequency,theta,sx,sy", [(0.1, 0.0, None, None), (0.25, 0.7, 2.0, 5.0),
                                                   (0.05, 2.0, None, 3.0), (0.4, np.pi / 4, 1.0, 1.0)])
def test_gabor_equals_skimage(frequency, theta, sx, sy):
    got = kernels.gabor_kernel(frequency, theta, sx, sy)
    want = skfilters.gabor_kernel(frequency, theta=theta, sigma_x=sx, sigma_y=sy)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)


def test_classic_kernels_find_edges():
    img = np.zeros((1, 8, 8, 1), np.float32)
    img[:, :, 4:] = 1.0  # a vertical edge between columns 3 and 4
    v = np.asarray(ops.conv2d(img, kernels.sobel_vertical()[:, :, None, None], padding="same"))[0, 2:6, :, 0]
    h = np.asarray(ops.conv2d(img, kernels.sobel_horizontal()[:, :, None, None], padding="same"))[0, 2:6, :, 0]
    assert np.all(np.abs(v[:, 3:5]) > 0) and np.all(v[:, :3] == 0) and np.all(v[:, 6:7] == 0)
    assert np.all(h == 0)
    e = np.asarray(ops.conv2d(img, kernels.edge_detect()[:, :, None, None]))
    assert e.sum() == 0 and np.abs(e).max() == 3
    assert kernels.edge_detect()[1, 1] == 8 and kernels.edge_detect().sum() == 0
    assert kernels.diagonal().trace() == 0
