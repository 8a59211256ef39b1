"""torch.compile(fullgraph=True) over the whole model on the "triton" backend: every kernel is a torch.library
op with a fake implementation, so the graph has no breaks and the compiled model computes the same logits."""
import pytest
import torch

import vit_fast
from tests.conftest import HAS_CUDA
from tests.helpers import randomize_
from tests.tolerances import MODEL_TOL, assert_close


def test_compile_fullgraph_triton_backend(device):
    model = randomize_(vit_fast.create("vit_ti_16", backend="triton", img_size=32, embed_dim=64, num_heads=2,
                                       mlp_dim=128, depth=2, num_classes=5)).to(device)
    compiled = torch.compile(model, fullgraph=True)
    x = torch.randn(2, 3, 32, 32, device=device)
    pixels = torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8, device=device)
    with torch.no_grad():
        assert_close(compiled(x), model(x), torch.float32, MODEL_TOL)
        assert_close(compiled(pixels), model(pixels), torch.float32, MODEL_TOL)


@pytest.mark.skipif(not HAS_CUDA, reason="CUDA graphs need a CUDA device")
def test_cuda_graph_capture_of_the_triton_model():
    model = vit_fast.create("vit_b_16", backend="triton").cuda().to(torch.bfloat16)
    static_x = torch.randn(4, 3, 224, 224, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        model(static_x)  # autotune outside the capture
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = model(static_x)
        new = torch.randn_like(static_x)
        static_x.copy_(new)
        graph.replay()
        assert_close(static_out, model(new), torch.bfloat16, MODEL_TOL)


@pytest.mark.skipif(not HAS_CUDA, reason="CUDA graphs need a CUDA device")
def test_capture_cuda_graphs_api():
    model = vit_fast.create("vit_ti_16", backend="auto").cuda().to(torch.bfloat16)
    graphed = model.capture_cuda_graphs([1, 4])
    with torch.no_grad():
        for batch in (1, 4, 3):  # 3 was not captured: runs eagerly
            x = torch.randn(batch, 3, 224, 224, device="cuda", dtype=torch.bfloat16)
            assert_close(graphed(x), model(x), torch.bfloat16, MODEL_TOL)
    assert sorted(shape[0] for shape in graphed.captured) == [1, 4]
    pixels = model.capture_cuda_graphs([2], dtype=torch.uint8, channels_last=True)
    x = torch.randint(0, 256, (2, 224, 224, 3), dtype=torch.uint8, device="cuda")
    with torch.no_grad():
        assert_close(pixels(x), model(x), torch.bfloat16, MODEL_TOL)


def test_capture_cuda_graphs_needs_cuda():
    model = vit_fast.create("vit_ti_16", img_size=32, depth=1)
    with pytest.raises(ValueError, match="needs the model on a CUDA device"):
        model.capture_cuda_graphs([1])
